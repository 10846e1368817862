//! Privileged: agent failures and operator mistakes end in a closed, explained state — never in
//! plaintext, never in a stream that looks complete when it was cut.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use meshd_tests::{cluster::AgentOptions, paths, procs, Agent, Cluster, Pod};

const T: Duration = Duration::from_secs(30);

fn testkit(pod: &Pod, args: &[&str]) -> std::process::Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

fn enroll(agent: &Agent, c: &Cluster, pod: &Pod, name: &str, cgroup: &str) -> std::process::Output {
    agent.meshctl(&[
        "enroll",
        "--name",
        name,
        "--cgroup",
        cgroup,
        "--netns",
        &pod.netns_path().display().to_string(),
        "--spiffe-id",
        &pod.spiffe_id(&c.trust_domain),
    ])
}

#[test]
fn a_restarted_agent_re_enrolls_runtime_workloads_before_releasing_the_old_links() {
    let mut c = Cluster::new("faults-restart");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let o = AgentOptions::default();
    let config_a = Agent::config(&c, &a, &[], &o); // the DaemonSet way: nothing in the config
    let mut agent_a = Agent::start(&a, config_a.clone(), &o);
    let _agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &o), &o);
    let _srv =
        procs::spawn_ready(testkit(&server, &["serve", "0.0.0.0:8080", "--name", "server"]), "server", "listening");
    let out = enroll(&agent_a, &c, &client, "client", &client.cgroup.display().to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dst = format!("{}:8080", server.ip);
    assert_eq!(client.connect(&dst).as_deref(), Ok("server"));
    agent_a.wait_log("flow closed", 1, T);
    agent_a.kill();
    assert!(client.connect(&dst).is_err(), "while the agent is dead the pod fails closed");
    let agent_a = Agent::start(&a, config_a, &o);
    assert_eq!(agent_a.status()["workloads"][0]["name"], "client", "the runtime-enrolled pod is enrolled again");
    assert_eq!(client.connect(&dst).as_deref(), Ok("server"));
    // The log file is shared with the first run, which logged one flow before it was killed.
    let log = agent_a.wait_log("flow closed", 2, T);
    let restarted = log.rfind("re-enrolled a workload").unwrap_or_else(|| panic!("{}", agent_a.log_tail(20)));
    assert!(
        log[restarted..].contains("flow closed"),
        "the connection after the restart went through the agent: {}",
        agent_a.log_tail(20)
    );
}

#[test]
fn one_cgroup_cannot_be_enrolled_twice_and_a_second_agent_for_a_node_is_refused() {
    let mut c = Cluster::new("faults-dup");
    let a = c.add_node("a");
    let pod = c.add_pod("a", "pod");
    let o = AgentOptions::default();
    let agent = Agent::start(&a, Agent::config(&c, &a, &[&pod], &o), &o);
    // The same cgroup spelled differently, under another name and identity.
    let spelled = format!("{}/", pod.cgroup.display());
    let out = enroll(&agent, &c, &pod, "impostor", &spelled);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already enrolled as workload pod"), "{err}");
    // A second agent with the same node name.
    let mut second = Agent::config(&c, &a, &[], &o);
    second.admin.socket = Some(c.run_dir().join("second.sock"));
    second.admin.http = None;
    let out = a.run_agent_to_end(&second, &c.run_dir().join("second.yaml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another meshd agent is already running"), "{err}");
    assert_eq!(agent.status()["ready"], true, "the first agent is untouched");
}

/// A receiver in pod "server" that reports how its stream ended.
fn receiver(pod: &Pod, port: u16) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child =
        testkit(pod, &["recv", &format!("0.0.0.0:{port}")]).stdout(Stdio::piped()).spawn().expect("spawn receiver");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert!(rx.recv_timeout(T).unwrap_or_default().contains("listening"));
    (child, rx)
}

#[test]
fn when_the_destination_agent_stops_or_dies_the_receiver_sees_a_reset_not_an_end() {
    for kill in [false, true] {
        let mut c = Cluster::new(if kill { "faults-kill-b" } else { "faults-stop-b" });
        let (a, b) = (c.add_node("a"), c.add_node("b"));
        let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
        let o = AgentOptions::default();
        let _agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &o), &o);
        let mut agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &o), &o);
        let (mut rx_child, rx) = receiver(&server, 9000);
        let mut source =
            testkit(&client, &["source", &format!("{}:9000", server.ip), "--bytes", "100000000", "--rate", "2000000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("source");
        std::thread::sleep(Duration::from_secs(2));
        if kill {
            agent_b.kill();
        } else {
            agent_b.stop();
        }
        let ended = rx.recv_timeout(T).expect("the receiver must learn the stream ended");
        assert!(
            ended.starts_with("error"),
            "kill={kill}: a cut stream must not look complete to the receiver: {ended}"
        );
        let _ = source.kill();
        let _ = source.wait();
        let _ = rx_child.wait();
    }
}

#[test]
fn a_pod_deleted_without_unenroll_is_unenrolled_by_the_agent() {
    let mut c = Cluster::new("faults-reap");
    let a = c.add_node("a");
    let pod = c.add_pod("a", "pod");
    let o = AgentOptions::default();
    let agent = Agent::start(&a, Agent::config(&c, &a, &[&pod], &o), &o);
    assert_eq!(agent.status()["workloads"].as_array().map(Vec::len), Some(1));
    std::fs::remove_dir(&pod.cgroup).expect("delete the pod's cgroup");
    let log = agent.wait_log("cgroup is gone: unenrolled", 1, Duration::from_secs(15));
    assert!(log.contains("cgroup is gone"), "{}", agent.log_tail(10));
    assert_eq!(agent.status()["workloads"].as_array().map(Vec::len), Some(0));
}
