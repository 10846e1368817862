//! Privileged: identity-based authorization across two nodes — decided at connect() on the
//! source node from the compiled BPF maps where the destination's identity is known, and by
//! the destination agent after the handshake for every flow; strict and permissive mode in the
//! kernel; malformed policies. (Live policy changes: `policy_live.rs`.)

use std::time::Duration;

use meshd_tests::{
    capture::{packets, Capture},
    paths,
    policy_mesh::{Mesh, Server},
    procs,
};

const T: Duration = Duration::from_secs(30);

fn matrix_policy(m: &Mesh) -> String {
    format!(
        r#"
endpoints:
  - {{ address: {packager}, spiffe_id: "spiffe://cluster.local/ns/media/sa/packager", labels: {{ app: packager }} }}
  - {{ address: {vault}, spiffe_id: "spiffe://cluster.local/ns/locked/sa/vault" }}
defaults:
  - {{ namespace: locked, action: deny }}
policies:
  - name: packager-ingest
    namespace: media
    selector: {{ labels: {{ app: packager }} }}
    action: allow
    rules:
      - from: {{ principals: [ "spiffe://cluster.local/ns/media/sa/enc" ] }}
        to: {{ ports: [ 9000, 8080 ] }}
      - from: {{ namespaces: [ "ingest-*" ] }}
        to: {{ ports: [ 9000 ] }}
  - name: no-debug
    namespace: media
    action: deny
    rules:
      - to: {{ ports: [ 8080 ] }}
  - name: origin-media-only
    namespace: media
    selector: {{ identities: [ "spiffe://cluster.local/ns/media/sa/origin" ] }}
    action: allow
    rules:
      - from: {{ namespaces: [ media ] }}
"#,
        packager = m.pod("packager").ip,
        vault = m.pod("vault").ip
    )
}

#[test]
fn the_policy_matrix_is_enforced_at_connect_and_by_the_destination() {
    let m = Mesh::new(
        "policy-matrix",
        &[("enc", "media", true), ("cam", "ingest-eu", true), ("rogue", "other", true)],
        &[("packager", "media", true), ("vault", "locked", true), ("origin", "media", true)],
    );
    let servers: Vec<Server> =
        [("packager", 9000), ("packager", 9001), ("packager", 8080), ("vault", 9000), ("origin", 9000)]
            .iter()
            .map(|(p, port)| m.serve(p, *port))
            .collect();
    m.apply(&m.write("matrix.yaml", &matrix_policy(&m)));

    // Denied at connect() on node a: EPERM, and no SYN leaves the pod for the mesh.
    let mut cap = Capture::start(m.c.node("a"), "wan0", "tcp");
    for (from, to, port, why) in [
        ("enc", "packager", 9001, "no ALLOW rule for the port"),
        ("enc", "packager", 8080, "deny wins over allow"),
        ("cam", "packager", 8080, "deny wins over the namespace wildcard"),
        ("rogue", "packager", 9000, "principal not allowed"),
        ("enc", "vault", 9000, "namespace default deny"),
    ] {
        let err = m.connect(from, to, port).expect_err(why);
        assert!(err.contains("Operation not permitted"), "{from} → {to}:{port} ({why}): {err}");
    }
    // Control: an allowed connection in the same capture does leave.
    assert_eq!(m.connect("enc", "packager", 9000).as_deref(), Ok("packager:9000"));
    cap.stop();
    for from in ["enc", "cam", "rogue"] {
        let syns = packets::syns_from(&cap.file, m.pod(from).ip.into());
        let want = usize::from(from == "enc");
        assert_eq!(syns, want, "{from}: SYNs on the wire (only the allowed control connection may send one)");
    }
    // Allowed: principal and namespace wildcard.
    assert_eq!(m.connect("cam", "packager", 9000).as_deref(), Ok("packager:9000"));
    // Origin is not in `endpoints`: the source cannot decide, the destination agent does.
    assert_eq!(m.connect("enc", "origin", 9000).as_deref(), Ok("origin:9000"));
    let err = m.connect("rogue", "origin", 9000).expect_err("denied by the destination agent");
    assert!(!err.contains("Operation not permitted"), "decided at the destination, not at connect(): {err}");
    let log_a = m.a.wait_log("denied: ", 1, Duration::from_secs(5));
    assert!(
        log_a.contains("denied: policy") || log_a.contains("denied: no"),
        "agent a tells why:\n{}",
        m.a.log_tail(10)
    );
    let log_b = m.b.wait_log("flow denied by policy", 1, Duration::from_secs(5));
    assert!(log_b.contains("flow denied by policy"), "agent b logs the denial:\n{}", m.b.log_tail(10));
    // Nothing denied ever reached a server.
    let accepted: Vec<usize> = servers.iter().map(Server::accepted).collect();
    assert_eq!(accepted, [2, 0, 0, 0, 1], "accepted connections per server");
    let events = &m.a.status()["ebpf"]["counters"]["events"];
    assert!(events.to_string().contains("policy_denied"), "{events}");
    // Denials are exported by side and identities.
    let metrics_a = m.a.metrics();
    let rogue_to_packager = metrics_a.lines().find(|l| {
        l.starts_with("meshd_policy_denials_total{")
            && l.contains("side=\"source\"")
            && l.contains("src=\"spiffe://cluster.local/ns/other/sa/rogue\"")
            && l.contains("dst=\"spiffe://cluster.local/ns/media/sa/packager\"")
    });
    assert!(rogue_to_packager.is_some_and(|l| l.ends_with(" 1")), "agent a metrics:\n{metrics_a}");
    let metrics_b = m.b.metrics();
    assert!(
        metrics_b.lines().any(|l| l.starts_with("meshd_policy_denials_total{")
            && l.contains("side=\"destination\"")
            && l.contains("src=\"spiffe://cluster.local/ns/other/sa/rogue\"")),
        "agent b metrics:\n{metrics_b}"
    );
}

#[test]
fn strict_workloads_refuse_plaintext_and_permissive_ones_count_it() {
    let m = Mesh::new(
        "policy-strict",
        &[("enc", "media", true), ("intruder", "media", false)],
        &[("packager", "media", true), ("legacy", "media", true), ("neighbor", "media", false)],
    );
    let _s1 = m.serve("packager", 9000);
    let _s2 = m.serve("legacy", 9000);
    let node_b_bridge = "10.100.1.1";
    m.apply(&m.write(
        "strict.yaml",
        &format!(
            r#"
peer_authentication:
  - {{ namespace: media, mode: strict, allow_plaintext_from: [ {node_b_bridge}/32 ] }}
  - {{ workload: "spiffe://cluster.local/ns/media/sa/legacy", mode: permissive }}
"#
        ),
    ));
    assert_eq!(m.connect("enc", "packager", 9000).as_deref(), Ok("packager:9000"), "meshed traffic passes");
    assert!(m.connect("intruder", "packager", 9000).is_err(), "plaintext from another node must fail");
    assert!(
        m.connect("neighbor", "packager", 9000).is_err(),
        "plaintext from an unenrolled pod on the same node must fail"
    );
    // Health checks from the node itself are allowed explicitly.
    let mut probe = m.c.node("b").command(paths::bin("testkit"));
    probe.args(["connect", &format!("{}:9000", m.pod("packager").ip), "--timeout-secs", "3"]);
    assert_eq!(procs::run_ok(probe, "health check", T).trim(), "packager:9000");
    // Permissive: plaintext passes and is counted.
    assert_eq!(m.connect("intruder", "legacy", 9000).as_deref(), Ok("legacy:9000"));
    let events = m.b.status()["ebpf"]["counters"]["events"].clone();
    let count = |name: &str| {
        events.as_array().into_iter().flatten().find(|e| e[0] == name).and_then(|e| e[1].as_u64()).unwrap_or(0)
    };
    assert!(count("plaintext_dropped") >= 2, "{events}");
    assert!(count("plaintext_accepted") >= 1, "{events}");
}

#[test]
fn a_malformed_policy_is_rejected_whole_and_the_old_one_stays() {
    let m = Mesh::new("policy-bad", &[("enc", "media", true)], &[("packager", "media", true)]);
    let _srv = m.serve("packager", 9001);
    let good = format!(
        "endpoints: [ {{ address: {}, spiffe_id: \"spiffe://cluster.local/ns/media/sa/packager\" }} ]\n\
         policies: [ {{ name: d, namespace: media, action: deny, rules: [ {{ to: {{ ports: [ 9001 ] }} }} ] }} ]\n",
        m.pod("packager").ip
    );
    m.apply(&m.write("good.yaml", &good));
    assert!(m.connect("enc", "packager", 9001).is_err());
    let cases = [
        ("syntax.yaml", "policies: [".to_string(), "syntax.yaml"),
        ("unknown.yaml", good.replace("rules:", "rulez:"), "unknown field"),
        (
            "principal.yaml",
            good.replace("to: { ports: [ 9001 ] }", "from: { principals: [ \"spiffe:/x\" ] }"),
            "principals[0]",
        ),
        (
            "dup.yaml",
            good.replace(
                "rules: [ { to: { ports: [ 9001 ] } } ]",
                "rules: [ { to: { ports: [ 9001 ] } }, { to: { ports: [ 9001 ] } } ]",
            ),
            "duplicates rules[0]",
        ),
        ("huge.yaml", format!("{good}#{}\n", "x".repeat(10 << 20)), "larger than the limit"),
    ];
    for (name, text, expect) in &cases {
        let out = m.a.meshctl(&["policy", "apply", &m.write(name, text).display().to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect) && err.contains("previous policy stays"),
            "{name}: {err}"
        );
    }
    assert!(m.connect("enc", "packager", 9001).is_err(), "the old policy is still in force");
}
