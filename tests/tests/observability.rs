//! Privileged: the agents' `/metrics` parsed by the Prometheus reference OpenMetrics parser
//! (Debian's python3-prometheus-client), bounded cardinality under 1,000 short flows, `/readyz`,
//! and the stable shape of `meshd status --json`.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use meshd_tests::{cluster::AgentOptions, paths, procs, Agent, Cluster, Pod};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn testkit(pod: &Pod, args: &[&str]) -> Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

fn two_nodes(label: &str) -> (Cluster, Pod, Pod, Agent, Agent) {
    let mut c = Cluster::new(label);
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let o = AgentOptions::default();
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &o), &o);
    let agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &o), &o);
    (c, client, server, agent_a, agent_b)
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "unit": f.unit,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// Parses an exposition with the reference OpenMetrics parser; panics on any format error.
fn openmetrics(text: &str) -> Vec<Value> {
    assert!(
        std::path::Path::new("/usr/lib/python3/dist-packages/prometheus_client").exists(),
        "privileged test: the Debian package python3-prometheus-client is missing; run `cargo xtask setup`"
    );
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(out.status.success(), "not valid OpenMetrics: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).expect("parser JSON").as_array().cloned().unwrap_or_default()
}

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("no family {name}"))
}

fn series<'a>(f: &'a Value, suffix: &str) -> Vec<&'a Value> {
    let want = format!("{}{suffix}", f["name"].as_str().unwrap_or_default());
    f["samples"].as_array().into_iter().flatten().filter(|s| s["name"] == want.as_str()).collect()
}

#[test]
fn metrics_are_valid_openmetrics_and_a_thousand_short_flows_stay_bounded() {
    let (c, client, server, agent_a, agent_b) = two_nodes("obs-cardinality");
    let _serve = procs::spawn_ready(testkit(&server, &["serve", "0.0.0.0:9000", "--name", "s"]), "server", "listening");
    // 1,000 connections in a row, each from a new source port.
    let out =
        procs::run_ok(testkit(&client, &["churn", &format!("{}:9000", server.ip), "--count", "1000"]), "churn", T);
    assert_eq!(out.trim(), "1000");
    let (src, dst) = (client.spiffe_id(&c.trust_domain), server.spiffe_id(&c.trust_domain));
    for (agent, direction) in [(&agent_a, "outbound"), (&agent_b, "inbound")] {
        let text = agent.metrics();
        let families = openmetrics(&text);
        let names: Vec<&str> = families.iter().filter_map(|f| f["name"].as_str()).collect();
        for name in names.iter().filter(|n| !n.starts_with("target")) {
            assert!(name.starts_with("meshd_"), "family {name} is not meshd_*");
        }
        let expect = [
            ("meshd_build", "info"),
            ("meshd_flows_opened", "counter"),
            ("meshd_flows_closed", "counter"),
            ("meshd_flows_active", "gauge"),
            ("meshd_flow_sent_bytes", "counter"),
            ("meshd_flow_received_bytes", "counter"),
            ("meshd_handshake_duration_seconds", "histogram"),
            ("meshd_handshake_failures", "counter"),
            ("meshd_policy_denials", "counter"),
            ("meshd_ebpf_errors", "counter"),
            ("meshd_ebpf_events", "counter"),
            ("meshd_svid_expiry_timestamp_seconds", "gauge"),
            ("meshd_svid_rotations", "counter"),
            ("meshd_tcp_rtt_seconds", "gauge"),
            ("meshd_tcp_retransmits", "counter"),
        ];
        for (name, ty) in expect {
            assert_eq!(family(&families, name)["type"], ty, "{name} on {direction}");
        }
        assert_eq!(family(&families, "meshd_flow_sent_bytes")["unit"], "bytes");
        // Cardinality: one series per family for 1,000 flows between the same two workloads.
        let opened = series(family(&families, "meshd_flows_opened"), "_total");
        assert_eq!(opened.len(), 1, "{direction}: {opened:?}");
        assert_eq!(opened[0]["value"], 1000.0, "{direction}");
        let labels = &opened[0]["labels"];
        assert_eq!(labels, &json!({"direction": direction, "src": src, "dst": dst, "data_path": labels["data_path"]}));
        let closed = series(family(&families, "meshd_flows_closed"), "_total");
        assert!(closed.len() <= 3, "close reasons are a small set: {closed:?}");
        assert_eq!(closed.iter().map(|s| s["value"].as_f64().unwrap_or(0.0)).sum::<f64>(), 1000.0);
        let total: usize = families.iter().map(|f| f["samples"].as_array().map_or(0, Vec::len)).sum();
        assert!(total < 150, "{direction}: {total} samples after 1,000 flows");
        assert!(!text.contains(&server.ip.to_string()) && !text.contains("127.0.0.1"), "no address is a label");
        let events = series(family(&families, "meshd_ebpf_events"), "_total");
        assert!(events.iter().any(|s| s["labels"]["event"] == "redirected"), "{events:?}");
        assert_eq!(series(family(&families, "meshd_policy_denials"), "_total").len(), 0);
        let expiry = series(family(&families, "meshd_svid_expiry_timestamp_seconds"), "");
        assert_eq!(expiry.len(), 1, "{expiry:?}");
    }
}

#[test]
fn healthz_and_readyz_answer() {
    let (_c, _client, _server, agent_a, _agent_b) = two_nodes("obs-readyz");
    assert_eq!(agent_a.http_get("/healthz").0, 200);
    let (status, body) = agent_a.http_get("/readyz");
    assert_eq!((status, body.trim()), (200, "ready"));
    assert_eq!(agent_a.http_get("/nothing").0, 404);
}

/// The JSON's shape: objects with their keys, arrays by their first element, leaves by type.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
    }
}

#[test]
fn status_json_keeps_its_shape_with_a_live_flow() {
    let (c, client, server, agent_a, _agent_b) = two_nodes("obs-status");
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let mut src = testkit(&client, &["source", &format!("{}:9000", server.ip), "--bytes", "40000000"]);
    src.args(["--rate", "2000000"]).stdout(Stdio::null());
    let _source = procs::Background { child: src.spawn().expect("spawn source"), what: "source".into() };
    let mut status = Value::Null;
    for _ in 0..50 {
        status = agent_a.status();
        let tcp_sampled = status["flows"][0]["tcp"]["mesh"]["rtt_us"].is_number();
        if tcp_sampled && status["flows"][0]["current_out_bps"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let flow = &status["flows"][0];
    let bps = flow["current_out_bps"].as_f64().unwrap_or(0.0);
    assert!((12e6..20e6).contains(&bps), "live rate of a 2 MB/s stream: {bps} bit/s; {flow}");
    assert_eq!(flow["peer_identity"], server.spiffe_id(&c.trust_domain));
    let golden: Value =
        serde_json::from_str(include_str!("golden/status-shape.json")).expect("golden/status-shape.json is JSON");
    let actual = shape(&status);
    if actual != golden {
        let path = c.run_dir().join("status-shape.json");
        std::fs::write(&path, serde_json::to_string_pretty(&actual).unwrap_or_default()).ok();
        panic!(
            "`meshd status --json` changed shape (fields are an interface: add, don't rename); now:\n{}",
            serde_json::to_string_pretty(&actual).unwrap_or_default()
        );
    }
    let table = String::from_utf8_lossy(&agent_a.meshctl(&["status"]).stdout).into_owned();
    assert!(table.contains(&server.spiffe_id(&c.trust_domain)) && table.contains("Mbit/s"), "{table}");
    assert!(table.contains(&client.spiffe_id(&c.trust_domain)) && table.contains("ms"), "{table}");
}

/// The value of the first sample of `family` whose labels include all of `labels`.
fn sample_value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let families = openmetrics(text);
    let f = families.iter().find(|f| f["name"] == family)?;
    let s = f["samples"].as_array()?.iter().find(|s| {
        s["name"].as_str().is_some_and(|n| n.ends_with("_total") || n == family)
            && labels.iter().all(|(k, v)| s["labels"][*k] == *v)
    })?;
    s["value"].as_f64()
}

#[test]
fn handshake_failures_and_refused_setups_are_counted_by_reason() {
    let mut c = Cluster::new("obs-handshake-failures");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let o = AgentOptions::default();
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &o), &o);
    // Node b's agent has another development CA: each side rejects the other's certificate.
    let other_ca = c.run_dir().join("other-ca");
    let mut init = Command::new(paths::bin("meshd"));
    init.args(["ca", "init", "--trust-domain", "cluster.local", "--dir"]).arg(&other_ca);
    procs::run_ok(init, "meshd ca init", T);
    let mut config_b = Agent::config(&c, &b, &[&server], &o);
    config_b.identity.dev_ca.as_mut().expect("dev ca").dir = other_ca;
    let agent_b = Agent::start(&b, config_b, &o);
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let out = procs::run(testkit(&client, &["connect", &format!("{}:9000", server.ip), "--send", "x"]), "client", T);
    assert!(!out.status.success(), "the flow must be refused");
    std::thread::sleep(Duration::from_millis(300));
    let (ma, mb) = (agent_a.metrics(), agent_b.metrics());
    let failed = |m: &str, dir: &str, reason: &str| {
        sample_value(m, "meshd_handshake_failures", &[("direction", dir), ("reason", reason)])
    };
    assert_eq!(failed(&ma, "outbound", "bad_certificate"), Some(1.0), "{ma}");
    assert_eq!(failed(&mb, "inbound", "peer_rejected_certificate"), Some(1.0), "{mb}");
    let setup = |m: &str, dir: &str| sample_value(m, "meshd_flow_setup_failures", &[("direction", dir)]);
    assert_eq!(setup(&ma, "outbound"), Some(1.0), "{ma}");
    assert_eq!(setup(&mb, "inbound"), Some(1.0), "{mb}");
    assert_eq!(sample_value(&ma, "meshd_flows_opened", &[]), None, "no flow was established: {ma}");
}
