//! Privileged: live policy changes — a denied stream is cut within a second while allowed ones
//! go on, and a thousand swaps under connection load never let a denied connection through.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use meshd_tests::{paths, policy_mesh::Mesh, procs};

const T: Duration = Duration::from_secs(30);

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
