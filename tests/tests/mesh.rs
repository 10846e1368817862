//! Privileged: two simulated nodes, a real meshd agent on each, traffic between pods through
//! both agents over mutually authenticated TLS.

use std::time::Duration;

use meshd_tests::{
    capture::{self, Capture},
    cluster::AgentOptions,
    paths,
    pattern::Pattern,
    procs, Agent, Cluster, Pod,
};

const T: Duration = Duration::from_secs(60);

fn testkit(pod: &Pod, args: &[&str]) -> std::process::Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

/// A two-node cluster with a client pod on node a and a server pod on node b, and both agents.
fn two_nodes(label: &str, opts: &AgentOptions) -> (Cluster, Pod, Pod, Agent, Agent) {
    let mut c = Cluster::new(label);
    let a = c.add_node("a");
    let b = c.add_node("b");
    let client = c.add_pod("a", "client");
    let server = c.add_pod("b", "server");
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], opts), opts);
    let agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], opts), opts);
    (c, client, server, agent_a, agent_b)
}

#[test]
fn a_200_mb_stream_arrives_intact_and_the_wire_carries_no_plaintext() {
    const BYTES: u64 = 200 * 1024 * 1024;
    let (c, client, server, agent_a, agent_b) = two_nodes("mesh-200mb", &AgentOptions::default());
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let mut cap = Capture::start(c.node("a"), "wan0", "tcp");

    let got = procs::run_ok(
        testkit(&client, &["source", &format!("{}:9000", server.ip), "--bytes", &BYTES.to_string()]),
        "source",
        Duration::from_secs(300),
    );
    let want = procs::run_ok(testkit(&client, &["expect", "--bytes", &BYTES.to_string()]), "expect", T);
    assert_eq!(got.trim(), want.trim(), "the sink must receive exactly the bytes sent");

    let wire = cap.stop();
    assert!(wire.len() as u64 > BYTES * 9 / 10, "the capture must hold the stream ({} bytes captured)", wire.len());
    for offset in [0, 8 << 10, 1 << 20, 50 << 20, BYTES - 4096] {
        let sample = Pattern::sample(1, offset, 48);
        assert_eq!(capture::count(&wire, &sample), 0, "plaintext of the stream at offset {offset} is on the wire");
    }
    // Flows are visible in both agents' logs with both identities.
    let wait = Duration::from_secs(5);
    let (log_a, log_b) = (agent_a.wait_log("flow closed", 1, wait), agent_b.wait_log("flow closed", 1, wait));
    let (id_client, id_server) = (client.spiffe_id(&c.trust_domain), server.spiffe_id(&c.trust_domain));
    assert!(log_a.contains("flow closed") && log_a.contains(&id_server), "agent a log:\n{log_a}");
    assert!(log_b.contains("flow closed") && log_b.contains(&id_client), "agent b log:\n{log_b}");
}

#[test]
fn status_lists_workloads_and_live_flows() {
    let (c, client, server, agent_a, _agent_b) = two_nodes("mesh-status", &AgentOptions::default());
    let status = agent_a.status();
    assert_eq!(status["ready"], true);
    assert_eq!(status["workloads"][0]["spiffe_id"], client.spiffe_id(&c.trust_domain));
    // A long-lived flow: the server never answers until the client half-closes.
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9001"]), "sink", "listening");
    let mut slow = testkit(&client, &["source", &format!("{}:9001", server.ip), "--bytes", "4000000000"]);
    let mut child = slow.stdout(std::process::Stdio::null()).spawn().expect("spawn source");
    let mut flows = serde_json::Value::Null;
    for _ in 0..100 {
        flows = agent_a.status()["flows"].clone();
        if flows.as_array().is_some_and(|f| f.iter().any(|f| f["bytes_out"].as_u64().unwrap_or(0) > 1_000_000)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let flow = &flows[0];
    assert_eq!(flow["direction"], "outbound", "{flows}");
    assert_eq!(flow["peer_identity"], server.spiffe_id(&c.trust_domain), "{flows}");
    assert_eq!(flow["destination"], format!("{}:9001", server.ip), "{flows}");
    assert!(flow["bytes_out"].as_u64().unwrap_or(0) > 1_000_000, "live byte counters: {flows}");
    assert!(flow["data_path"] == "userspace" || flow["data_path"] == "ktls", "{flows}");
}

/// Runs `testkit connect` in `pod` and returns (success, stdout, stderr).
fn connect(pod: &Pod, addr: &str, send: Option<&str>) -> (bool, String, String) {
    let mut args = vec!["connect", addr];
    if let Some(s) = send {
        args.extend(["--send", s]);
    }
    let out = procs::run(testkit(pod, &args), "client", T);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn failures_reach_the_application_as_resets_with_reasons_in_the_logs() {
    let (_c, client, server, agent_a, agent_b) = two_nodes("mesh-failures", &AgentOptions::default());
    // Nothing listens on the destination port: the destination agent reports "refused".
    let (ok, out, err) = connect(&client, &format!("{}:9999", server.ip), Some("hello"));
    assert!(!ok && out.is_empty(), "the client must fail, got {out:?}");
    assert!(err.contains("reset"), "the application sees a reset: {err}");
    let log_a = agent_a.wait_log("refused: connect to", 1, Duration::from_secs(5));
    assert!(log_a.contains("refused: connect to"), "agent a says why:\n{}", agent_a.log_tail(20));
    // The server resets the connection mid-flow: the client sees a reset too.
    let _rst = procs::spawn_ready(testkit(&server, &["reset", "0.0.0.0:9002"]), "reset server", "listening");
    let (ok, _, err) = connect(&client, &format!("{}:9002", server.ip), Some("x"));
    // Depending on timing the client meets the reset in its read ("reset"), or already when it
    // half-closes ("not connected"): either way its connection failed.
    let failed = err.contains("reset") || err.contains("not connected");
    assert!(!ok && failed, "a reset propagates to the client: {err}");
    // Half-close both ways: the sink answers only after the client's EOF arrives.
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9003"]), "sink", "listening");
    let (ok, out, err) = connect(&client, &format!("{}:9003", server.ip), Some("ping"));
    assert!(ok, "{err}");
    assert!(out.trim().ends_with(" 4"), "the sink saw EOF after 4 bytes and answered: {out:?}");
    assert!(agent_b.wait_log("flow closed", 1, Duration::from_secs(5)).contains("flow closed"));
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused_and_nothing_leaks() {
    let mut c = Cluster::new("mesh-wrong-ca");
    let a = c.add_node("a");
    let b = c.add_node("b");
    let client = c.add_pod("a", "client");
    let server = c.add_pod("b", "server");
    let opts = AgentOptions::default();
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &opts), &opts);
    // Node b's agent has its own development CA: same trust domain name, different keys.
    let other_ca = c.run_dir().join("other-ca");
    procs::run_ok(
        {
            let mut cmd = std::process::Command::new(paths::bin("meshd"));
            cmd.args(["ca", "init", "--trust-domain", "cluster.local", "--dir"]).arg(&other_ca);
            cmd
        },
        "meshd ca init",
        T,
    );
    let mut config_b = Agent::config(&c, &b, &[&server], &opts);
    config_b.identity.dev_ca.as_mut().expect("dev ca").dir = other_ca;
    let agent_b = Agent::start(&b, config_b, &opts);
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let mut cap = Capture::start(c.node("a"), "wan0", "tcp");
    let secret = "the-plaintext-that-must-not-leak";
    let (ok, out, _) = connect(&client, &format!("{}:9000", server.ip), Some(secret));
    assert!(!ok && out.is_empty(), "the flow must be refused, got {out:?}");
    let wire = cap.stop();
    assert!(capture::count(&wire, b":15008") == 0 || !wire.is_empty());
    assert_eq!(capture::count(&wire, secret.as_bytes()), 0, "plaintext reached the wire");
    let log_a = agent_a.wait_log("flow refused", 1, Duration::from_secs(5));
    assert!(
        log_a.contains("invalid peer certificate") || log_a.contains("UnknownIssuer") || log_a.contains("another CA"),
        "agent a says why the handshake failed:\n{}",
        agent_a.log_tail(20)
    );
    let log_b = agent_b.wait_log("inbound flow refused", 1, Duration::from_secs(5));
    assert!(log_b.contains("inbound flow refused"), "agent b logs the refusal:\n{}", agent_b.log_tail(20));
}

#[test]
fn svids_rotate_under_a_live_stream_without_losing_a_byte() {
    const BYTES: u64 = 96 << 20;
    let mut c = Cluster::new("mesh-rotation");
    let a = c.add_node("a");
    let b = c.add_node("b");
    let client = c.add_pod("a", "client");
    let server = c.add_pod("b", "server");
    let opts = AgentOptions { log: "info,meshd::identity=debug".into(), ..AgentOptions::default() };
    let short = |mut cfg: meshd::config::Config| {
        cfg.identity.dev_ca.as_mut().expect("dev ca").svid_ttl = Duration::from_secs(4);
        cfg
    };
    let agent_a = Agent::start(&a, short(Agent::config(&c, &a, &[&client], &opts)), &opts);
    let _agent_b = Agent::start(&b, short(Agent::config(&c, &b, &[&server], &opts)), &opts);
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let serial = |agent: &Agent| agent.status()["workloads"][0]["svid_not_after"].clone();
    let before = serial(&agent_a);
    let started = std::time::Instant::now();
    let got = procs::run_ok(
        // 96 MiB at 12 MiB/s: an 8-second stream across several 2-second renewals.
        testkit(
            &client,
            &[
                "source",
                &format!("{}:9000", server.ip),
                "--bytes",
                &BYTES.to_string(),
                "--rate",
                &(12u64 << 20).to_string(),
            ],
        ),
        "source",
        Duration::from_secs(120),
    );
    let want = procs::run_ok(testkit(&client, &["expect", "--bytes", &BYTES.to_string()]), "expect", T);
    assert_eq!(got.trim(), want.trim(), "the stream must arrive intact across rotations");
    let after = serial(&agent_a);
    assert!(
        started.elapsed() > Duration::from_secs(3) && before != after,
        "the SVID rotated during the stream ({before} → {after})"
    );
    // New handshakes after the rotation use the new SVID and work.
    let (ok, out, err) = connect(&client, &format!("{}:9000", server.ip), Some("after"));
    assert!(ok && out.trim().ends_with(" 5"), "{out} {err}");
}

#[test]
fn svid_files_in_the_cert_manager_layout_identify_workloads_and_reload() {
    let mut c = Cluster::new("mesh-files");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let ca = c.ca_dir();
    let issue = |pod: &Pod, dir: &std::path::Path| {
        let mut cmd = std::process::Command::new(paths::bin("meshd"));
        cmd.args(["ca", "issue", "--dir"]).arg(&ca).args([
            "--spiffe-id",
            &pod.spiffe_id(&c.trust_domain),
            "--ttl",
            "1h",
            "--out",
        ]);
        cmd.arg(dir.join(&pod.name));
        procs::run_ok(cmd, "meshd ca issue", T);
    };
    let (dir_a, dir_b) = (c.run_dir().join("svids-a"), c.run_dir().join("svids-b"));
    issue(&client, &dir_a);
    issue(&server, &dir_b);
    let o = AgentOptions::default();
    let files = |mut cfg: meshd::config::Config, dir: &std::path::Path| {
        cfg.identity = meshd::config::IdentityConfig {
            dev_ca: None,
            files: Some(meshd::config::FilesConfig { dir: dir.to_path_buf() }),
        };
        cfg
    };
    let agent_a = Agent::start(&a, files(Agent::config(&c, &a, &[&client], &o), &dir_a), &o);
    // Node b's agent starts with no workload; the server is enrolled at runtime.
    let agent_b = Agent::start(&b, files(Agent::config(&c, &b, &[], &o), &dir_b), &o);
    let out = agent_b.meshctl(&[
        "enroll",
        "--name",
        "server",
        "--cgroup",
        &server.cgroup.display().to_string(),
        "--netns",
        &server.netns_path().display().to_string(),
        "--spiffe-id",
        &server.spiffe_id(&c.trust_domain),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let (ok, out, err) = connect(&client, &format!("{}:9000", server.ip), Some("hello"));
    assert!(ok && out.trim().ends_with(" 5"), "{out} {err}");
    // cert-manager renews the client's SVID: the agent picks the new files up.
    let before = agent_a.status()["workloads"][0]["svid_not_after"].clone();
    std::thread::sleep(Duration::from_millis(1100));
    issue(&client, &dir_a);
    let log = agent_a.wait_log("loaded new SVID from files", 1, Duration::from_secs(15));
    assert!(log.contains("loaded new SVID from files"), "{}", agent_a.log_tail(10));
    assert_ne!(agent_a.status()["workloads"][0]["svid_not_after"], before, "the new SVID is in use");
    let (ok, out, err) = connect(&client, &format!("{}:9000", server.ip), Some("again"));
    assert!(ok && out.trim().ends_with(" 5"), "{out} {err}");
}
