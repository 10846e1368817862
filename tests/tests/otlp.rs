//! Privileged: both agents export their flow spans over OTLP/HTTP to an in-process receiver
//! listening on 127.0.0.1:4318 inside each node's namespace. One flow must give one span tree
//! per agent — `flow` with `handshake`, `authorization` and `data` children — carrying the
//! identities and the original destination.

use std::time::{Duration, Instant};

use meshd::config::Otlp;
use meshd_tests::{cluster::AgentOptions, otlp, paths, procs, Agent, Cluster, Node};

fn receiver(node: &Node) -> otlp::Receiver {
    let ns = meshd::netns::Netns::open(&node.netns_path()).expect("open node netns");
    let listener = ns.listen("127.0.0.1:4318".parse().expect("addr"), 0).expect("listen in the node's namespace");
    listener.set_nonblocking(false).expect("blocking listener");
    let r = otlp::Receiver::default();
    r.serve(listener);
    r
}

/// Waits until `r` holds a `flow` span with at least `children` child spans.
fn tree(r: &otlp::Receiver, children: usize) -> (otlp::Span, Vec<otlp::Span>) {
    let start = Instant::now();
    loop {
        let spans = r.spans();
        let roots: Vec<&otlp::Span> = spans.iter().filter(|s| s.name == "flow").collect();
        if let [root] = roots.as_slice() {
            let kids: Vec<otlp::Span> = spans.iter().filter(|s| s.parent_span_id == root.span_id).cloned().collect();
            if kids.len() >= children {
                assert!(root.parent_span_id.is_empty(), "the flow span is a root");
                assert!(kids.iter().all(|k| k.trace_id == root.trace_id), "one trace per flow");
                return ((*root).clone(), kids);
            }
        }
        assert!(roots.len() <= 1, "one flow, one tree: {roots:?}");
        assert!(start.elapsed() < Duration::from_secs(20), "no complete span tree received: {spans:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn each_flow_is_one_exported_span_tree_with_identities_and_destination() {
    let mut c = Cluster::new("otlp");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let (recv_a, recv_b) = (receiver(&a), receiver(&b));
    let o = AgentOptions::default();
    let otlp = Otlp { endpoint: "http://127.0.0.1:4318".into(), export_interval: Duration::from_millis(500) };
    let with_otlp = |mut cfg: meshd::config::Config| {
        cfg.otlp = Some(otlp.clone());
        cfg
    };
    let _agent_a = Agent::start(&a, with_otlp(Agent::config(&c, &a, &[&client], &o)), &o);
    let _agent_b = Agent::start(&b, with_otlp(Agent::config(&c, &b, &[&server], &o)), &o);
    let mut sink = server.command(paths::bin("testkit"));
    sink.args(["sink", "0.0.0.0:9000"]);
    let _sink = procs::spawn_ready(sink, "sink", "listening");
    let mut connect = client.command(paths::bin("testkit"));
    connect.args(["connect", &format!("{}:9000", server.ip), "--send", "hello"]);
    let out = procs::run_ok(connect, "connect", Duration::from_secs(30));
    assert!(out.trim().ends_with(" 5"), "{out}");

    let (src, dst) = (client.spiffe_id(&c.trust_domain), server.spiffe_id(&c.trust_domain));
    let destination = format!("{}:9000", server.ip);
    for (recv, dir, node, children) in [
        (&recv_a, "outbound", &a, &["handshake", "authorization", "data"][..]),
        (&recv_b, "inbound", &b, &["handshake", "authorization", "connect", "data"][..]),
    ] {
        let (root, kids) = tree(recv, children.len());
        let attr = |k: &str| root.attributes.get(k).cloned().unwrap_or_default();
        assert_eq!(attr("dir"), dir);
        assert_eq!(attr("src_id"), src, "{dir}: {root:?}");
        assert_eq!(attr("dst_id"), dst, "{dir}: {root:?}");
        assert_eq!(attr("dst"), destination, "{dir}: the original destination");
        assert_eq!(attr("reason"), "done", "{dir}: {root:?}");
        let moved = if dir == "outbound" { attr("bytes_out") } else { attr("bytes_in") };
        assert_eq!(moved, "5", "{dir}: the 5 bytes sent towards the server: {root:?}");
        assert_eq!(root.resource.get("service.name").map(String::as_str), Some("meshd"));
        assert_eq!(root.resource.get("meshd.node"), Some(&node.agent_name));
        let mut names: Vec<&str> = kids.iter().map(|k| k.name.as_str()).collect();
        names.sort_unstable();
        let mut want = children.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{dir}: child spans");
        let data = kids.iter().find(|k| k.name == "data").expect("data span");
        assert!(data.attributes.get("data_path").is_some_and(|p| p == "userspace" || p == "ktls"), "{data:?}");
    }
}
