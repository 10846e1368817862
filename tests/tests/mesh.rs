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
    assert!(wire.len() as u64 > BYTES, "the capture must hold the stream ({} bytes captured)", wire.len());
    for offset in [0, 8 << 10, 1 << 20, 50 << 20, BYTES - 4096] {
        let sample = Pattern::sample(1, offset, 48);
        assert_eq!(capture::count(&wire, &sample), 0, "plaintext of the stream at offset {offset} is on the wire");
    }
    // Flows are visible in both agents' logs with both identities.
    let (log_a, log_b) = (agent_a.log(), agent_b.log());
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
