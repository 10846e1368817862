//! Privileged: identity-based authorization across two nodes — decided at connect() on the
//! source node from the compiled BPF maps where the destination's identity is known, and by
//! the destination agent after the handshake for every flow; strict and permissive mode in the
//! kernel; live policy swaps.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use meshd_tests::{
    capture::{packets, Capture},
    cluster::AgentOptions,
    paths, procs, Agent, Cluster, Pod,
};

const T: Duration = Duration::from_secs(30);

struct Mesh {
    c: Cluster,
    a: Agent,
    b: Agent,
    pods: Vec<Pod>,
}

impl Mesh {
    /// Node a: `a_pods` (enrolled with agent a); node b: `b_pods`. Each entry: (name, SPIFFE
    /// namespace, labels, enrolled). Every pod gets `spiffe://cluster.local/ns/<ns>/sa/<name>`.
    fn new(label: &str, a_pods: &[(&str, &str, bool)], b_pods: &[(&str, &str, bool)]) -> Self {
        let mut c = Cluster::new(label);
        let (na, nb) = (c.add_node("a"), c.add_node("b"));
        let mut pods = Vec::new();
        let o = AgentOptions::default();
        let mut agents = Vec::new();
        for (node, list) in [(&na, a_pods), (&nb, b_pods)] {
            let created: Vec<(Pod, &str, bool)> =
                list.iter().map(|(name, ns, enrolled)| (c.add_pod(&node.name, name), *ns, *enrolled)).collect();
            let enrolled: Vec<&Pod> = created.iter().filter(|p| p.2).map(|p| &p.0).collect();
            let mut config = Agent::config(&c, node, &enrolled, &o);
            for w in &mut config.workloads {
                let ns = created.iter().find(|p| p.0.name == w.name).map(|p| p.1).unwrap_or("media");
                w.spiffe_id = format!("spiffe://cluster.local/ns/{ns}/sa/{}", w.name);
                if w.name == "packager" {
                    w.labels.insert("app".into(), "packager".into());
                }
            }
            agents.push(Agent::start(node, config, &o));
            pods.extend(created.into_iter().map(|p| p.0));
        }
        let b = agents.pop().expect("agent b");
        let a = agents.pop().expect("agent a");
        Self { c, a, b, pods }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.c.run_dir().join(name);
        std::fs::write(&path, text).expect("write policy");
        path
    }

    /// `meshd policy apply` on both agents; panics unless both accept.
    fn apply(&self, path: &Path) {
        for agent in [&self.a, &self.b] {
            let out = agent.meshctl(&["policy", "apply", &path.display().to_string()]);
            assert!(
                out.status.success(),
                "policy apply on {}: {}",
                agent.node.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn serve(&self, pod: &str, port: u16) -> Server {
        Server::start(self.pod(pod), port, &self.c.run_dir().join(format!("{pod}-{port}.log")))
    }

    /// `testkit connect` from `from` to `to:port`: Ok(answer) or Err(stderr).
    fn connect(&self, from: &str, to: &str, port: u16) -> Result<String, String> {
        let mut cmd = self.pod(from).command(paths::bin("testkit"));
        cmd.args(["connect", &format!("{}:{port}", self.pod(to).ip), "--timeout-secs", "3"]);
        let out = procs::run(cmd, "client", T);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// A `testkit serve --log` whose accepted connections can be counted.
struct Server {
    _bg: procs::Background,
    log: PathBuf,
}

impl Server {
    fn start(pod: &Pod, port: u16, log: &Path) -> Self {
        let mut cmd = pod.command(paths::bin("testkit"));
        let file = std::fs::File::create(log).expect("server log");
        cmd.args(["serve", &format!("0.0.0.0:{port}"), "--name", &format!("{}:{port}", pod.name), "--log"]);
        cmd.stdout(file).stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn server");
        let start = Instant::now();
        while !std::fs::read_to_string(log).unwrap_or_default().contains("listening") {
            assert!(start.elapsed() < T, "server {}:{port} did not start", pod.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { _bg: procs::Background { child, what: "server".into() }, log: log.into() }
    }

    fn accepted(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches("accepted").count()
    }
}

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

/// Two paced streams from enc to packager (ports 9000 and 9001); a new policy denies 9001.
#[test]
fn a_policy_change_cuts_a_denied_live_stream_within_a_second_and_spares_the_others() {
    let m = Mesh::new("policy-live", &[("enc", "media", true)], &[("packager", "media", true)]);
    let allow_both = "policies: []\n";
    let deny_9001 =
        "policies:\n  - { name: cut, namespace: media, action: deny, rules: [ { to: { ports: [ 9001 ] } } ] }\n";
    m.apply(&m.write("open.yaml", allow_both));
    let sinks: Vec<procs::Background> = [9000u16, 9001]
        .iter()
        .map(|p| {
            let mut cmd = m.pod("packager").command(paths::bin("testkit"));
            cmd.args(["sink", &format!("0.0.0.0:{p}")]);
            procs::spawn_ready(cmd, "sink", "listening")
        })
        .collect();
    let bytes = (24u64 << 20).to_string();
    let rate = (4u64 << 20).to_string();
    let start = |port: u16| {
        let mut cmd = m.pod("enc").command(paths::bin("testkit"));
        cmd.args(["source", &format!("{}:{port}", m.pod("packager").ip), "--bytes", &bytes, "--rate", &rate]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn source")
    };
    let (kept, mut cut) = (start(9000), start(9001));
    std::thread::sleep(Duration::from_secs(2));
    let applied = Instant::now();
    m.apply(&m.write("deny.yaml", deny_9001));
    let mut ended = None;
    while applied.elapsed() < Duration::from_secs(5) {
        if cut.try_wait().expect("poll").is_some() {
            ended = Some(applied.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ended = ended.expect("the denied stream must be cut");
    assert!(ended < Duration::from_secs(1), "cut after {ended:?}");
    let out = cut.wait_with_output().expect("cut stream output");
    assert!(!out.status.success(), "the application must see the cut as a failure");
    let kept = kept.wait_with_output().expect("kept stream");
    let mut want = Command::new(paths::bin("testkit"));
    want.args(["expect", "--bytes", &bytes]);
    assert_eq!(
        String::from_utf8_lossy(&kept.stdout).trim(),
        procs::run_ok(want, "expect", T).trim(),
        "the allowed stream is untouched"
    );
    assert!(m.a.wait_log("live flow cut", 1, Duration::from_secs(5)).contains("live flow cut"));
    drop(sinks);
}

#[test]
fn a_thousand_policy_swaps_under_load_never_let_a_denied_connection_through() {
    let m = Mesh::new("policy-swaps", &[("enc", "media", true)], &[("packager", "media", true)]);
    let allowed = m.serve("packager", 9000);
    let denied = m.serve("packager", 9001);
    let endpoint = format!(
        "endpoints:\n  - {{ address: {}, spiffe_id: \"spiffe://cluster.local/ns/media/sa/packager\" }}\n",
        m.pod("packager").ip
    );
    let p1 = m.write("p1.yaml", &format!("{endpoint}policies:\n  - {{ name: d, namespace: media, action: deny, rules: [ {{ to: {{ ports: [ 9001 ] }} }} ] }}\n"));
    let p2 = m.write("p2.yaml", &format!("{endpoint}defaults: [ {{ namespace: media, action: deny }} ]\npolicies:\n  - {{ name: a, namespace: media, action: allow, rules: [ {{ to: {{ ports: [ \"1-9000\", \"9002-65535\" ] }} }} ] }}\n"));
    m.apply(&p1);
    let probe = |port: u16| {
        let mut cmd = m.pod("enc").command(paths::bin("testkit"));
        cmd.args(["probe", &format!("{}:{port}", m.pod("packager").ip), "--count", "100000", "--timeout-ms", "2000"]);
        cmd.stdout(Stdio::piped()).spawn().expect("spawn probe")
    };
    let (mut to_denied, mut to_allowed) = (probe(9001), probe(9000));
    for i in 0..1000 {
        let path = if i % 2 == 0 { &p2 } else { &p1 };
        let out = m.a.meshctl(&["policy", "apply", &path.display().to_string()]);
        assert!(out.status.success(), "swap {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = to_denied.kill();
    let _ = to_allowed.kill();
    let (d, a) = (to_denied.wait_with_output().expect("probe"), to_allowed.wait_with_output().expect("probe"));
    let _ = (d, a);
    assert_eq!(denied.accepted(), 0, "a denied connection got through during the swaps");
    assert!(allowed.accepted() > 100, "allowed connections kept flowing during the swaps ({})", allowed.accepted());
    assert!(m.a.status()["ebpf"]["counters"]["events"].to_string().contains("policy_denied"));
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

/// The same with FFmpeg: a real-time MPEG-TS stream from pod "source" to pod "receiver"; a
/// policy denying the receiver's port cuts it within a second; the received file is an exact
/// prefix of what was sent (nothing after the cut, nothing corrupted).
#[test]
fn a_policy_change_cuts_a_live_ffmpeg_stream_within_a_second() {
    use meshd_tests::media::{apps::Push, scenario::TwoNodes, verify, Clip};
    let s = TwoNodes::start("policy-ffmpeg");
    let write = |name: &str, text: &str| {
        let p = s.file(name);
        std::fs::write(&p, text).expect("write policy");
        p
    };
    let apply = |path: &Path| {
        for agent in [&s.agent_a, &s.agent_b] {
            let out = agent.meshctl(&["policy", "apply", &path.display().to_string()]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    };
    apply(&write("open.yaml", "policies: []\n"));
    let clip = Clip::short(20);
    let (sent, received) = (s.file("sent.ts"), s.file("received.ts"));
    let mut rx = s.ffmpeg(&s.receiver, "receiver", &Push::MpegTsTcp.receiver(&received)).expect("receiver");
    rx.wait_listening(Push::MpegTsTcp.port(), Duration::from_secs(10)).expect("receiver listening");
    let mut tx =
        s.ffmpeg(&s.source, "sender", &Push::MpegTsTcp.live_sender(&clip, true, s.receiver.ip, &sent)).expect("sender");
    std::thread::sleep(Duration::from_secs(4));
    assert!(tx.try_status().is_none(), "the stream is live before the change");
    let deny = format!(
        "policies:\n  - {{ name: stop-ingest, namespace: media, action: deny, rules: [ {{ to: {{ ports: [ {} ] }} }} ] }}\n",
        Push::MpegTsTcp.port()
    );
    let applied = Instant::now();
    apply(&write("deny.yaml", &deny));
    let status = tx.wait(Duration::from_secs(5)).expect("the sender must stop");
    let took = applied.elapsed();
    assert!(took < Duration::from_secs(1), "the stream was cut after {took:?}");
    assert!(!status.success(), "FFmpeg must see the cut as an error, not a clean end");
    let _ = rx.wait(Duration::from_secs(10));
    let frames = verify::frames(&sent, &received).expect("decode both");
    assert!(frames.is_truncated_copy(60), "what arrived is an exact prefix of what was sent: {frames}");
}
