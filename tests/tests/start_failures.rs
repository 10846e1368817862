//! Privileged: a start that fails, and enrollments that must be refused, leave every other
//! workload as it was — nothing attached behind an agent that never ran, no record overwritten.

use meshd_tests::{cluster::AgentOptions, paths, policy_mesh::Mesh, procs, Agent, Cluster, Pod};

fn enroll(agent: &Agent, pod: &Pod, name: &str, cgroup: &str) -> Result<String, String> {
    let netns = pod.netns_path().display().to_string();
    let id = format!("spiffe://cluster.local/ns/default/sa/{name}");
    let out = agent.meshctl(&["enroll", "--name", name, "--cgroup", cgroup, "--netns", &netns, "--spiffe-id", &id]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A second agent on node a (another node name, its admin socket in the same folder) cannot
/// bind the admin HTTP port agent a holds: it exits before attaching anything, so its pod still
/// connects directly, and agent a's record of its runtime-enrolled pod is untouched.
#[test]
fn a_start_that_fails_at_its_admin_listeners_attaches_nothing_and_overwrites_no_record() {
    let mut c = Cluster::new("start-fail");
    let (a, _b) = (c.add_node("a"), c.add_node("b"));
    let (p1, p2, server) = (c.add_pod("a", "p1"), c.add_pod("a", "p2"), c.add_pod("b", "server"));
    let mut serve = server.command(paths::bin("testkit"));
    serve.args(["serve", "0.0.0.0:8080", "--name", "server"]);
    let _srv = procs::spawn_ready(serve, "server", "listening");
    let o = AgentOptions::default();
    let agent = Agent::start(&a, Agent::config(&c, &a, &[], &o), &o);
    enroll(&agent, &p1, "p1", &p1.cgroup.display().to_string()).expect("runtime enrollment of p1");
    let record = agent.config.admin_socket().with_file_name(format!("{}-workloads.json", agent.config.node));
    let before = std::fs::read_to_string(&record).expect("agent a records its runtime workloads");
    assert!(before.contains("\"p1\""), "{before}");

    let mut second = Agent::config(&c, &a, &[&p2], &o);
    second.node = format!("{}-2", agent.config.node);
    second.admin.socket = Some(agent.config.admin_socket().with_file_name("second.sock"));
    let out = a.run_agent_to_end(&second, &c.run_dir().join("second.yaml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bind the admin HTTP listener"), "{err}");

    let pins = std::path::Path::new("/sys/fs/bpf/meshd").join(&second.node);
    assert!(!pins.exists(), "the failed start left pins in {}", pins.display());
    assert!(!second.admin_socket().exists(), "the failed start left its admin socket");
    assert_eq!(p2.connect(&format!("{}:8080", server.ip)).as_deref(), Ok("server"), "p2 is not intercepted");
    assert_eq!(std::fs::read_to_string(&record).expect("record"), before, "agent a's record is untouched");
    assert_eq!(agent.status()["workloads"][0]["name"], "p1");
}

/// The agent's own cgroup, a cgroup above it, and a second workload in a pod namespace already
/// served are refused with a reason.
#[test]
fn enrolling_the_agents_cgroup_its_ancestors_or_a_served_namespace_is_refused() {
    let mut c = Cluster::new("start-refuse");
    let a = c.add_node("a");
    let pod = c.add_pod("a", "pod");
    let o = AgentOptions::default();
    let agent = Agent::start(&a, Agent::config(&c, &a, &[&pod], &o), &o);
    // A cgroup above the agent's, but not the host's root: were the check broken, the test must
    // not intercept the whole machine.
    let above = a.agent_cgroup.parent().expect("the agent's cgroup has a parent").to_path_buf();
    for cgroup in [a.agent_cgroup.clone(), above] {
        let err = enroll(&agent, &pod, "grab", &cgroup.display().to_string()).expect_err("must be refused");
        assert!(err.contains("holds the agent's own cgroup"), "{}: {err}", cgroup.display());
    }
    let twin = std::path::PathBuf::from(format!("{}-twin", pod.cgroup.display()));
    std::fs::create_dir(&twin).expect("create a second cgroup");
    let err = enroll(&agent, &pod, "twin", &twin.display().to_string()).expect_err("must be refused");
    let _ = std::fs::remove_dir(&twin);
    assert!(err.contains("is already served for workload pod"), "{err}");
    assert_eq!(agent.status()["workloads"].as_array().map(Vec::len), Some(1), "nothing else was enrolled");
}

/// `meshd policy apply` is kept over agent restarts: the restarted agents deny what the applied
/// policy denies (agent a at connect(), knowing the packager from `endpoints`), and say where
/// the policy came from.
#[test]
fn a_policy_applied_at_runtime_survives_agent_restarts() {
    let mut m = Mesh::new("policy-restart", &[("enc", "media", true)], &[("packager", "media", true)]);
    let _srv = m.serve("packager", 9000);
    assert_eq!(m.connect("enc", "packager", 9000).map(|_| ()), Ok(()), "allowed before any policy");
    let deny = format!(
        "endpoints: [ {{ address: {}, spiffe_id: \"spiffe://cluster.local/ns/media/sa/packager\" }} ]\n\
         policies: [ {{ name: shut, namespace: media, action: deny, rules: [ {{ to: {{ ports: [ 9000 ] }} }} ] }} ]\n",
        m.pod("packager").ip
    );
    let file = m.write("deny.yaml", &deny);
    m.apply(&file);
    let denied = |m: &Mesh| {
        let err = m.connect("enc", "packager", 9000).expect_err("the policy denies enc → packager:9000");
        assert!(err.contains("Operation not permitted"), "denied at connect(): {err}");
    };
    denied(&m);
    let o = AgentOptions::default();
    for agent in [&mut m.a, &mut m.b] {
        let (config, node) = (agent.config.clone(), agent.node.clone());
        assert!(agent.stop().is_some_and(|s| s.success()), "agent {} stops cleanly", node.name);
        *agent = Agent::start(&node, config, &o);
        let status = agent.status();
        assert_eq!(status["policy"]["loaded"], true, "{status}");
        assert_eq!(status["policy"]["source"], file.display().to_string(), "{status}");
        assert!(agent.log().contains("re-applied the policy applied at runtime"), "{}", agent.log_tail(20));
    }
    denied(&m);
}

/// A runtime-enrolled pod that a restarted agent cannot enroll again (something holds its
/// capture port) stays recorded and closed, is listed in status, is enrolled by the next start
/// that can, and `meshd unenroll` forgets it and gives it back its direct path.
#[test]
fn a_workload_that_cannot_be_enrolled_again_stays_recorded_until_enrolled_or_unenrolled() {
    let mut c = Cluster::new("start-unrestored");
    let (a, _b) = (c.add_node("a"), c.add_node("b"));
    let (pod, server) = (c.add_pod("a", "pod"), c.add_pod("b", "server"));
    let mut serve = server.command(paths::bin("testkit"));
    serve.args(["serve", "0.0.0.0:8080", "--name", "server"]);
    let _srv = procs::spawn_ready(serve, "server", "listening");
    let dst = format!("{}:8080", server.ip);
    let o = AgentOptions::default();
    let config = Agent::config(&c, &a, &[], &o);
    let mut agent = Agent::start(&a, config.clone(), &o);
    enroll(&agent, &pod, "pod", &pod.cgroup.display().to_string()).expect("runtime enrollment");
    let record = config.admin_socket().with_file_name(format!("{}-workloads.json", config.node));
    let squat = || {
        let mut cmd = pod.command(paths::bin("testkit"));
        cmd.args(["serve", &format!("127.0.0.1:{}", config.ports.capture), "--name", "squatter"]);
        procs::spawn_ready(cmd, "squatter", "listening")
    };
    for round in 0..2 {
        agent.stop();
        let squatter = squat();
        agent = Agent::start(&a, config.clone(), &o);
        let status = agent.status();
        assert_eq!(status["unrestored_workloads"][0]["name"], "pod", "round {round}: {status}");
        assert!(std::fs::read_to_string(&record).expect("record").contains("\"pod\""), "round {round}");
        drop(squatter);
        if round == 0 {
            agent.stop();
            agent = Agent::start(&a, config.clone(), &o);
            assert_eq!(agent.status()["workloads"][0]["name"], "pod", "the next start enrolls it");
            // Intercepted again: node b runs no agent, so the meshed connection fails closed.
            assert!(pod.connect(&dst).is_err(), "the pod is meshed, not direct");
        }
    }
    let out = agent.meshctl(&["unenroll", "--name", "pod"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent.status()["unrestored_workloads"].as_array().map(Vec::len), Some(0));
    assert!(!std::fs::read_to_string(&record).expect("record").contains("\"pod\""));
    assert_eq!(pod.connect(&dst).as_deref(), Ok("server"), "direct again");
}
