//! Privileged: real media protocols between a pod on node a and a pod on node b, through both
//! meshd agents. FFmpeg uses plain TCP; every stream is checked frame-exact (decoded frames'
//! MD5, see `meshd_tests::media::framemd5`), the link between the nodes is searched for
//! plaintext media, and both agents must have logged the flows with both identities.

use std::{path::Path, time::Duration};

use meshd_tests::{
    capture::Capture,
    media::{
        agent_log::{self, ClosedFlow},
        apps::{hls, Push},
        scenario::TwoNodes,
        verify, Clip,
    },
};

const LISTEN: Duration = Duration::from_secs(10);
const LOGGED: Duration = Duration::from_secs(10);

/// Both agents logged the flow(s) to `dst` as closed with one of the `ends` reasons, with the
/// right identities on each side; returns (outbound records on a, inbound records on b).
fn assert_flows_logged(s: &TwoNodes, dst: &str, count: usize, ends: &[&str]) -> (Vec<ClosedFlow>, Vec<ClosedFlow>) {
    let out = agent_log::wait_closed(&s.agent_a, dst, count, LOGGED).expect("agent a's flow records");
    let inb = agent_log::wait_closed(&s.agent_b, dst, count, LOGGED).expect("agent b's flow records");
    for f in &out {
        assert!(f.is_outbound(), "{f:?}");
        assert_eq!((f.local_identity.as_str(), f.peer_identity.as_str()), (&*s.source_id(), &*s.receiver_id()));
    }
    for f in &inb {
        assert!(!f.is_outbound(), "{f:?}");
        assert_eq!((f.local_identity.as_str(), f.peer_identity.as_str()), (&*s.receiver_id(), &*s.source_id()));
    }
    for f in out.iter().chain(&inb) {
        assert!(ends.contains(&f.reason.as_str()), "a completed stream's flow ends with one of {ends:?}: {f:?}");
        assert!(f.data_path == "userspace" || f.data_path == "ktls", "{f:?}");
    }
    (out, inb)
}

/// Nothing left running in the pods, no live flow left in either agent.
fn assert_nothing_leaked(s: &TwoNodes) {
    assert_eq!(s.pod_processes(), Vec::<String>::new(), "processes left in the pods");
    for agent in [&s.agent_a, &s.agent_b] {
        if let Err(flows) = agent_log::wait_no_live_flows(agent, Duration::from_secs(5)) {
            panic!("agent {} still lists flows: {flows}", agent.node.name);
        }
    }
}

fn assert_no_plaintext(wire: &[u8], sent: &Path, received: &Path, s: &TwoNodes) {
    let check = verify::wire(wire, sent, received, &s.file("samples")).expect("search the capture");
    assert!(check.clean(), "{check}");
}

/// A push protocol end to end: receiver listens on b, sender on a pushes a 4 s clip.
/// `ends`: the close reasons the agents may log (see the RTMP test).
fn push(label: &str, proto: Push, audio_tail_missing: usize, ends: &[&str]) {
    let s = TwoNodes::start(label);
    let sent = s.file("sent.mkv");
    Clip::short(4).encode(&sent).expect("encode the clip");
    let received = s.file(&format!("received.{}", proto.extension()));
    let mut cap = Capture::start(s.node("a"), "wan0", "tcp");
    let mut rx = s.ffmpeg(&s.receiver, "receiver", &proto.receiver(&received)).expect("start the receiver");
    rx.wait_listening(proto.port(), LISTEN).expect("receiver listening");
    let mut tx = s.ffmpeg(&s.source, "sender", &proto.sender(&sent, false, s.receiver.ip)).expect("start the sender");
    tx.wait_ok(Duration::from_secs(60)).expect("the sender finishes");
    rx.wait_ok(Duration::from_secs(20)).expect("the receiver ends when the stream ends");
    let wire = cap.stop();

    let frames = verify::frames(&sent, &received).expect("decode both streams");
    assert!(frames.identical_but_audio_tail(audio_tail_missing), "{proto:?}: {frames}");
    assert_no_plaintext(&wire, &sent, &received, &s);
    assert_flows_logged(&s, &format!("{}:{}", s.receiver.ip, proto.port()), 1, ends);
    assert_nothing_leaked(&s);
}

#[test]
fn mpegts_over_tcp_arrives_frame_exact() {
    let s = TwoNodes::start("media-ts");
    let clip = Clip::short(4);
    let (sent, received) = (s.file("sent.ts"), s.file("received.ts"));
    let mut cap = Capture::start(s.node("a"), "wan0", "tcp");
    let mut rx = s.ffmpeg(&s.receiver, "receiver", &Push::MpegTsTcp.receiver(&received)).expect("start receiver");
    rx.wait_listening(Push::MpegTsTcp.port(), LISTEN).expect("receiver listening");
    let args = Push::MpegTsTcp.live_sender(&clip, false, s.receiver.ip, &sent);
    let mut tx = s.ffmpeg(&s.source, "sender", &args).expect("start the live sender");
    tx.wait_ok(Duration::from_secs(60)).expect("the sender finishes");
    rx.wait_ok(Duration::from_secs(20)).expect("the receiver ends when the stream ends");
    let wire = cap.stop();

    let frames = verify::frames(&sent, &received).expect("decode both streams");
    assert!(frames.identical(), "{frames}");
    assert_eq!(frames.video_sent, clip.frames as usize, "the sender encoded the whole clip");
    assert_no_plaintext(&wire, &sent, &received, &s);
    // The tee wrote the same bytes to the file and the socket: the agents moved exactly that.
    let sent_len = std::fs::metadata(&sent).expect("sent file").len();
    let (out, inb) = assert_flows_logged(&s, &format!("{}:9000", s.receiver.ip), 1, &["done"]);
    assert_eq!((out[0].bytes_out, out[0].bytes_in), (sent_len, 0), "agent a: {:?}", out[0]);
    assert_eq!((inb[0].bytes_in, inb[0].bytes_out), (sent_len, 0), "agent b: {:?}", inb[0]);
    assert_nothing_leaked(&s);
}

/// FFmpeg's RTMP publisher closes its socket while the server still sends its last replies, so
/// even without the mesh every session ends with the publisher's kernel answering RST
/// (seen on loopback with tcpdump). Agent a then logs `reset` for the flow; that is accurate.
#[test]
fn rtmp_publish_arrives_frame_exact() {
    push("media-rtmp", Push::Rtmp, 0, &["done", "reset"]);
}

/// FFmpeg's RTP AAC packetizer (libavformat/rtpenc_aac.c) sends a buffered frame only when the
/// next one arrives and does not flush at the end, so the clip's final AAC frame never leaves
/// the sender — with or without the mesh (checked on loopback: 181 frames sent, 180 received).
/// We require exactly that one frame to be missing and everything else identical.
#[test]
fn rtsp_record_over_tcp_interleaved_arrives_frame_exact() {
    push("media-rtsp", Push::RtspTcp, 1, &["done"]);
}

#[test]
fn hls_put_then_playback_over_http_is_frame_exact() {
    let s = TwoNodes::start("media-hls");
    let sent = s.file("sent.mkv");
    Clip::short(4).encode(&sent).expect("encode the clip");
    let played = s.file("played.ts");
    let mut cap = Capture::start(s.node("a"), "wan0", "tcp");
    let server = hls::server(&s.receiver, &s.file("server.py"), &s.file("www")).expect("write the server");
    let mut server = s.spawn(server, "hls server").expect("start the HLS server");
    server.wait_listening(hls::PORT, LISTEN).expect("HLS server listening");

    let mut publish = s.ffmpeg(&s.source, "publisher", &hls::publisher(&sent, false, s.receiver.ip)).expect("publish");
    publish.wait_ok(Duration::from_secs(60)).expect("the publisher PUTs every segment and the playlist");
    let segments = hls::wait_published(&s.file("www"), LISTEN).unwrap_or_else(|e| {
        let flows = agent_log::closed_flows(&s.agent_a.log());
        panic!("{e:#}\nserver log:\n{}\npublisher:\n{}\nagent a flows: {flows:#?}", server.stderr(), publish.stderr())
    });
    assert!(segments >= 4, "a 4 s clip in 1 s segments: {segments} segments");

    let mut play = s.ffmpeg(&s.source, "player", &hls::player(s.receiver.ip, &played)).expect("play");
    play.wait_ok(Duration::from_secs(60)).expect("the player fetches the playlist and every segment");
    drop(server);
    let wire = cap.stop();

    let frames = verify::frames(&sent, &played).expect("decode both streams");
    assert!(frames.identical(), "{frames}");
    assert_no_plaintext(&wire, &sent, &played, &s);
    // Each PUT and each GET is its own connection (the server answers HTTP/1.0 and closes), so
    // its own mesh flow: at least one PUT and
    // one GET per segment, plus the playlist.
    let (out, _) = assert_flows_logged(&s, &format!("{}:{}", s.receiver.ip, hls::PORT), 2 * segments + 2, &["done"]);
    let moved: u64 = out.iter().map(|f| f.bytes_out + f.bytes_in).sum();
    let media: u64 = (0..segments)
        .map(|i| std::fs::metadata(s.file(&format!("www/live/seg{i:03}.ts"))).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(moved >= 2 * media, "segments went up and came back down through agent a: {moved} < 2 × {media}");
    assert_nothing_leaked(&s);
}

/// Ten minutes of media (small frames) encoded and streamed as fast as the path allows: the
/// receiver's file must keep growing (no stall longer than 10 s) and every frame must arrive.
#[test]
fn ten_minutes_of_mpegts_stream_without_stall_or_loss() {
    let s = TwoNodes::start("media-long");
    let clip = Clip::long(10);
    let (sent, received) = (s.file("sent.ts"), s.file("received.ts"));
    let mut cap = Capture::start(s.node("a"), "wan0", "tcp");
    let mut rx = s.ffmpeg(&s.receiver, "receiver", &Push::MpegTsTcp.receiver(&received)).expect("start receiver");
    rx.wait_listening(Push::MpegTsTcp.port(), LISTEN).expect("receiver listening");
    let args = Push::MpegTsTcp.live_sender(&clip, false, s.receiver.ip, &sent);
    let mut tx = s.ffmpeg(&s.source, "sender", &args).expect("start the live sender");

    let start = std::time::Instant::now();
    let (mut last_len, mut last_growth, mut longest_stall) = (0, start, Duration::ZERO);
    while tx.try_status().is_none() {
        assert!(start.elapsed() < Duration::from_secs(180), "the stream did not finish in 180 s");
        let len = std::fs::metadata(&received).map(|m| m.len()).unwrap_or(0);
        if len > last_len {
            (last_len, last_growth) = (len, std::time::Instant::now());
        }
        longest_stall = longest_stall.max(last_growth.elapsed());
        assert!(longest_stall < Duration::from_secs(10), "stalled: received file stuck at {last_len} bytes");
        std::thread::sleep(Duration::from_millis(200));
    }
    tx.wait_ok(Duration::ZERO).expect("the sender finishes");
    rx.wait_ok(Duration::from_secs(20)).expect("the receiver ends when the stream ends");
    let streamed = start.elapsed();
    let wire = cap.stop();

    let frames = verify::frames(&sent, &received).expect("decode both streams");
    assert!(frames.identical(), "{frames}");
    assert_eq!(frames.video_sent, clip.frames as usize, "all {} frames encoded", clip.frames);
    assert_no_plaintext(&wire, &sent, &received, &s);
    let sent_len = std::fs::metadata(&sent).expect("sent file").len();
    let (out, _) = assert_flows_logged(&s, &format!("{}:9000", s.receiver.ip), 1, &["done"]);
    assert_eq!(out[0].bytes_out, sent_len, "{:?}", out[0]);
    eprintln!(
        "{}s of media ({sent_len} bytes) streamed in {streamed:?}; longest stall {longest_stall:?}",
        clip.seconds()
    );
    assert_nothing_leaked(&s);
}
