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

/// Flows the agent has logged as closed, waiting (up to 5 s) until there are at least
/// `expected` — a flow is logged when both directions have ended, just after the client got its
/// answer — and then a little longer, so an unexpected extra one shows too.
fn flows_closed(agent: &Agent, expected: usize) -> usize {
    let count = || agent.log().matches("flow closed").count();
    let start = std::time::Instant::now();
    while count() < expected && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    count()
}

#[test]
fn workloads_enroll_and_unenroll_at_runtime_and_sigterm_fails_closed_or_detaches() {
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
    assert_eq!(flows_closed(&agent_a, 1), 1, "after unenroll the agent is not in the path");

    // SIGTERM (default on_exit: keep_closed): exit 0, the programs stay attached, so the pod's
    // meshed connections are refused — never sent directly — until an agent runs again.
    let pins = Path::new("/sys/fs/bpf/meshd").join(&a.agent_name);
    let out =
        agent_a.meshctl(&["enroll", "--name", "client", "--cgroup", &cgroup, "--netns", &netns, "--spiffe-id", &id]);
    assert!(out.status.success());
    let status = agent_a.stop().expect("agent exit status");
    assert!(status.success(), "the agent must exit cleanly on SIGTERM: {status}\n{}", agent_a.log_tail(10));
    assert!(pins.join("links").read_dir().map(|d| d.count()).unwrap_or(0) >= 4, "links stay pinned");
    let out = procs::run(testkit(&client, &["connect", &dst, "--timeout-secs", "5"]), "client", T);
    assert!(!out.status.success(), "while no agent runs, a meshed connection must fail closed: {:?}", out);
    // A restarted agent adopts them; `on_exit: detach` then uninstalls on SIGTERM.
    let detach = AgentOptions { on_exit: meshd::config::OnExit::Detach, ..AgentOptions::default() };
    let mut agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &detach), &detach);
    assert_eq!(ask(&["connect", &dst]), "server");
    // The log file is shared with the first run (one flow logged there).
    assert_eq!(flows_closed(&agent_a, 2), 2, "the restarted agent carries the pod's flows:\n{}", agent_a.log_tail(10));
    let status = agent_a.stop().expect("agent exit status");
    assert!(status.success(), "{status}\n{}", agent_a.log_tail(10));
    assert!(!pins.exists(), "on_exit: detach removes the pins");
    let attached = procs::run_ok(
        {
            let mut cmd = Command::new("bpftool");
            cmd.args(["cgroup", "show"]).arg(&client.cgroup);
            cmd
        },
        "bpftool",
        T,
    );
    assert!(!attached.contains("meshd"), "programs still attached after a detaching shutdown:\n{attached}");
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

    // Each failure: exit status 1 and exactly one `meshd:` line that names the thing.
    let one_line = |err: &str| {
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("meshd:")).collect();
        assert_eq!(lines.len(), 1, "one error line: {err}");
        lines[0].to_string()
    };
    let cgroup2 = meshd::cgroup::cgroup2_root().expect("cgroup v2");
    let (code, err) = run_agent(&c, "a", &base(&wl(&cgroup2.join("no-such-pod").display().to_string(), &netns)), false);
    assert_eq!(code, Some(1), "{err}");
    let line = one_line(&err);
    assert!(line.contains("no-such-pod") && line.contains("does not exist"), "{line}");

    let (code, err) = run_agent(&c, "a", &base(&wl(&cgroup, "/var/run/netns/no-such-netns")), false);
    assert_eq!(code, Some(1), "{err}");
    let line = one_line(&err);
    assert!(line.contains("no-such-netns") && line.contains("network namespace"), "{line}");
    assert_eq!(line.matches("No such file").count(), 1, "the cause is printed once: {line}");

    let (code, err) = run_agent(&c, "a", &base(""), true);
    assert_eq!(code, Some(1), "{err}");
    let line = one_line(&err);
    assert!(line.contains("lacks") && line.contains("CAP_BPF") && line.contains("root"), "{line}");
    assert!(!err.contains("kernel TLS"), "the privilege check comes first: {err}");

    // The failed starts left nothing behind.
    assert!(!Path::new("/sys/fs/bpf/meshd").join(&node_name).exists(), "a failed start must remove its pins");
}
