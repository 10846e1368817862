//! Privileged: the agent as an operator drives it — runtime enrollment through the CLI, clean
//! shutdown, and a clear one-line error for each kind of bad input.

use std::{path::Path, process::Command, time::Duration};

use meshd_tests::{cluster::AgentOptions, paths, procs, Agent, Cluster, Pod};

const T: Duration = Duration::from_secs(30);

fn testkit(pod: &Pod, args: &[&str]) -> Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

/// "flow closed" lines in the agent's log, once it has `want` (the client may see its answer
/// a moment before the agent logs the end of the flow) or after 2 s.
fn flows_closed(agent: &Agent, want: usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let n = agent.log().matches("flow closed").count();
        if n >= want || start.elapsed() > Duration::from_secs(2) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workloads_enroll_and_unenroll_at_runtime_and_sigterm_detaches_everything() {
    let mut c = Cluster::new("cli-enroll");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let o = AgentOptions::default();
    let mut agent_a = Agent::start(&a, Agent::config(&c, &a, &[], &o), &o);
    let _agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &o), &o);
    let _srv =
        procs::spawn_ready(testkit(&server, &["serve", "0.0.0.0:8080", "--name", "server"]), "server", "listening");
    let dst = format!("{}:8080", server.ip);
    let ask = |args: &[&str]| procs::run_ok(testkit(&client, args), "client", T).trim().to_string();

    // Not enrolled: direct.
    assert_eq!(ask(&["connect", &dst]), "server");
    assert_eq!(flows_closed(&agent_a, 0), 0);
    // Enrolled through the CLI: meshed.
    let id = client.spiffe_id(&c.trust_domain);
    let cgroup = client.cgroup.display().to_string();
    let netns = client.netns_path().display().to_string();
    let out =
        agent_a.meshctl(&["enroll", "--name", "client", "--cgroup", &cgroup, "--netns", &netns, "--spiffe-id", &id]);
    assert!(out.status.success(), "meshd enroll: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent_a.status()["workloads"][0]["spiffe_id"], id.as_str());
    assert_eq!(ask(&["connect", &dst]), "server");
    assert_eq!(flows_closed(&agent_a, 1), 1, "the connection went through agent a:\n{}", agent_a.log_tail(10));
    // Enrolling again, or with a bad identity, is refused with a reason.
    let again =
        agent_a.meshctl(&["enroll", "--name", "client", "--cgroup", &cgroup, "--netns", &netns, "--spiffe-id", &id]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already enrolled"));
    let bad = agent_a.meshctl(&[
        "enroll",
        "--name",
        "x",
        "--cgroup",
        &cgroup,
        "--netns",
        &netns,
        "--spiffe-id",
        "spiffe://other.org/x",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("trust domain"), "{}", String::from_utf8_lossy(&bad.stderr));
    // Unenrolled: direct again.
    let out = agent_a.meshctl(&["unenroll", "--name", "client"]);
    assert!(out.status.success(), "meshd unenroll: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ask(&["connect", &dst]), "server");
    assert_eq!(flows_closed(&agent_a, 2), 1, "after unenroll the agent is not in the path");

    // SIGTERM: exit 0, pins removed, programs detached from the pod's cgroup.
    let pins = Path::new("/sys/fs/bpf/meshd").join(&a.agent_name);
    let out =
        agent_a.meshctl(&["enroll", "--name", "client", "--cgroup", &cgroup, "--netns", &netns, "--spiffe-id", &id]);
    assert!(out.status.success());
    assert!(pins.join("links").read_dir().map(|d| d.count()).unwrap_or(0) >= 3);
    let status = agent_a.stop().expect("agent exit status");
    assert!(status.success(), "the agent must exit cleanly on SIGTERM: {status}\n{}", agent_a.log_tail(10));
    assert!(!pins.exists(), "pins must be removed on shutdown");
    let attached = procs::run_ok(
        {
            let mut cmd = Command::new("bpftool");
            cmd.args(["cgroup", "show"]).arg(&client.cgroup);
            cmd
        },
        "bpftool",
        T,
    );
    assert!(!attached.contains("meshd"), "programs still attached after shutdown:\n{attached}");
    assert_eq!(ask(&["connect", &dst]), "server", "the direct path is back");
}

/// Runs `meshd run` with `config` (YAML text) on node `node`'s namespace; returns (exit code, stderr).
fn run_agent(c: &Cluster, node: &str, config: &str, as_nobody: bool) -> (Option<i32>, String) {
    let path = c.run_dir().join(format!("bad-{}.yaml", config.len()));
    std::fs::write(&path, config).expect("write config");
    let n = c.node(node);
    let mut cmd = if as_nobody {
        let mut cmd = n.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]);
        cmd.arg(paths::bin("meshd"));
        cmd
    } else {
        n.command(paths::bin("meshd"))
    };
    cmd.args(["run", "--config"]).arg(&path);
    let out = procs::run(cmd, "meshd run", T);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_input_fails_with_one_line_that_names_the_thing() {
    let mut c = Cluster::new("cli-errors");
    c.add_node("a");
    let pod = c.add_pod("a", "pod");
    let ca = c.ca_dir();
    let node_name = format!("{}-a", c.id);
    let base = |workload: &str| {
        format!(
            "node: {node_name}\ntrust_domain: cluster.local\nadmin: {{ socket: {}/admin.sock }}\n\
             identity: {{ dev_ca: {{ dir: {} }} }}\nmesh: {{ destinations: [ {{ cidr: 10.100.0.0/16 }} ] }}\n{workload}",
            c.run_dir().display(),
            ca.display()
        )
    };
    let wl = |cgroup: &str, netns: &str| {
        format!("workloads:\n  - {{ name: pod, cgroup: {cgroup}, netns: {netns}, spiffe_id: \"spiffe://cluster.local/ns/m/sa/pod\" }}\n")
    };
    let netns = pod.netns_path().display().to_string();
    let cgroup = pod.cgroup.display().to_string();

    let (code, err) = run_agent(&c, "a", &base("workloads: [ { name: Bad Name } ]\n"), false);
    assert_eq!(code, Some(64), "an invalid config exits 64 (EX_USAGE): {err}");
    assert!(err.contains("bad-") && err.contains(".yaml"), "names the file: {err}");

    let (code, err) = run_agent(&c, "a", &base(&wl("/sys/fs/cgroup/unified/no-such-pod", &netns)), false);
    assert_ne!(code, Some(0));
    assert!(err.contains("no-such-pod") && err.contains("does not exist"), "{err}");

    let (code, err) = run_agent(&c, "a", &base(&wl(&cgroup, "/var/run/netns/no-such-netns")), false);
    assert_ne!(code, Some(0));
    assert!(err.contains("no-such-netns") && err.contains("network namespace"), "{err}");

    let (code, err) = run_agent(&c, "a", &base(""), true);
    assert_ne!(code, Some(0));
    assert!(err.contains("lacks") && err.contains("CAP_BPF") && err.contains("root"), "{err}");

    // The failed starts left nothing behind.
    assert!(!Path::new("/sys/fs/bpf/meshd").join(&node_name).exists(), "a failed start must remove its pins");
    for line in err.lines().filter(|l| l.starts_with("meshd:")) {
        assert!(!line.is_empty());
    }
}
