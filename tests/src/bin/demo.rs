//! The media demo (`cargo xtask demo`, as root): two simulated nodes, a meshd agent on each,
//! FFmpeg streaming live H.264/AAC in MPEG-TS over plain TCP from a pod on node a to a pod on
//! node b. FFmpeg knows nothing about TLS; the mesh carries the stream over mutually
//! authenticated TLS 1.3. The demo then proves it: frame-exact delivery, no plaintext on the
//! wire, who talked to whom, which data path — printed, and written to `target/demo/report.json`
//! (`--report PATH` or `MESHD_DEMO_REPORT`). Exit status: 0 all checks passed, 1 a check
//! failed, 2 the demo could not run, 130 interrupted. Ctrl-C unwinds: namespaces, cgroups, pins
//! and processes are removed (also on failure), so it can run again at once.

#[path = "../demo/report.rs"]
mod report;

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use meshd_tests::{
    capture::Capture,
    media::{agent_log, apps::Push, ffmpeg::Proc, interrupt, scenario::TwoNodes, tshark, verify, Clip},
};
use report::{ClipInfo, Report};

const TS: Push = Push::MpegTsTcp;

#[derive(Parser)]
#[command(about = "Stream live media between two simulated nodes through meshd and verify it")]
struct Cli {
    /// Where to write the JSON report [default: <workspace>/target/demo/report.json].
    #[arg(long, env = "MESHD_DEMO_REPORT")]
    report: Option<PathBuf>,
    /// Seconds of media to stream (in real time).
    #[arg(long, env = "MESHD_DEMO_SECONDS", default_value_t = 15)]
    seconds: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let report_path = cli.report.clone().unwrap_or_else(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        workspace.parent().map_or(workspace.clone(), PathBuf::from).join("target/demo/report.json")
    });
    if let Err(e) = interrupt::install() {
        eprintln!("demo: install the Ctrl-C handler: {e}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let mut report = Report::default();
    // Everything the demo creates lives inside `run`: when it returns — or panics, or is
    // interrupted — the cluster is dropped and removed before the summary is printed.
    let outcome = catch_unwind(AssertUnwindSafe(|| run(&cli, &mut report)));
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(panic_message(&panic)),
    };
    report.error = error.map(|e| if interrupt::requested() { format!("interrupted: {e}") } else { e });
    report.durations.total_s = started.elapsed().as_secs_f64();
    report.finish();
    println!("{}", report.summary(&report_path));
    if let Err(e) = report.write(&report_path) {
        eprintln!("demo: {e:#}");
        return ExitCode::from(2);
    }
    match (interrupt::requested(), report.ok, report.checks.is_empty()) {
        (true, _, _) => ExitCode::from(130),
        (false, true, _) => ExitCode::SUCCESS,
        (false, false, true) => ExitCode::from(2),
        (false, false, false) => ExitCode::from(1),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
    format!("panicked: {}", msg.unwrap_or_else(|| "(no message)".into()))
}

fn run(cli: &Cli, r: &mut Report) -> Result<()> {
    meshd_tests::require::root();
    meshd_tests::require::program("ffmpeg", "ffmpeg");
    let t = Instant::now();
    let clip = Clip::short(cli.seconds);
    r.clip = Some(ClipInfo::new(&clip));
    println!("setting up two nodes, pod \"source\" on a, pod \"receiver\" on b, and a meshd agent on each node…");
    let s = TwoNodes::start("demo");
    r.destination = format!("{}:{}", s.receiver.ip, TS.port());
    let (sent, received) = (s.file("sent.ts"), s.file("received.ts"));
    let mut cap = Capture::start(s.node("a"), "wan0", "tcp");
    let mut rx = s.ffmpeg(&s.receiver, "receiver", &TS.receiver(&received))?;
    rx.wait_listening(TS.port(), Duration::from_secs(10))?;
    r.durations.setup_s = t.elapsed().as_secs_f64();

    println!("streaming {} s of live H.264/AAC: ffmpeg -re … -f mpegts tcp://{}", cli.seconds, r.destination);
    let t = Instant::now();
    let mut tx = s.ffmpeg(&s.source, "source", &TS.live_sender(&clip, true, s.receiver.ip, &sent))?;
    let live_paths = watch(&s, &mut tx, &r.destination, Duration::from_secs(u64::from(cli.seconds) + 60))?;
    tx.wait_ok(Duration::ZERO)?;
    rx.wait_ok(Duration::from_secs(20))?;
    r.durations.stream_s = t.elapsed().as_secs_f64();

    println!("verifying…");
    let t = Instant::now();
    let wire = cap.stop();
    let file_len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    r.sizes.sent_file = file_len(&sent);
    r.sizes.received_file = file_len(&received);
    r.sizes.captured_on_wire = wire.len() as u64;

    let frames = verify::frames(&sent, &received)?;
    (r.frames_sent, r.frames_received) = (frames.video_sent, frames.video_received);
    (r.audio_frames_sent, r.audio_frames_received) = (frames.audio_sent, frames.audio_received);
    r.framemd5_match = frames.identical();
    r.frames = Some(frames);
    r.check("framemd5_match", frames.identical(), frames.to_string());
    let whole = frames.video_sent == clip.frames as usize;
    r.check("whole_clip_sent", whole, format!("{} of {} frames encoded", frames.video_sent, clip.frames));

    let w = verify::wire(&wire, &sent, &received, &s.file("samples"))?;
    r.plaintext_hits_on_wire = w.on_wire.total();
    r.check("no_plaintext_on_wire", w.on_wire.total() == 0 && w.capture_bytes > 0, w.on_wire.to_string());
    r.check("plaintext_search_control", w.control.total() > 0, format!("in the received file: {}", w.control));
    r.wire = Some(w);

    let inbound_port = s.agent_b.config.ports.inbound;
    r.wire_tls = tshark::server_hellos(&cap.file, &[inbound_port])?;
    let tls13 =
        !r.wire_tls.is_empty() && r.wire_tls.iter().all(|h| h.version == "TLS 1.3" && h.server_port == inbound_port);
    r.check("tls13_on_wire", tls13, format!("{:?}", r.wire_tls));

    check_flows(&s, r, &live_paths)?;
    check_leftovers(&s, r, [&mut rx, &mut tx]);
    r.durations.verify_s = t.elapsed().as_secs_f64();
    println!("cleaning up…");
    Ok(())
}

/// Waits for the source to finish, showing the agents' live flows (`meshd status --json`);
/// returns the data paths the live flows to `dst` reported.
fn watch(s: &TwoNodes, tx: &mut Proc, dst: &str, deadline: Duration) -> Result<Vec<String>> {
    let start = Instant::now();
    let (mut paths, mut last_print) = (Vec::new(), Instant::now());
    while tx.try_status().is_none() {
        if interrupt::requested() {
            bail!("interrupted while streaming");
        }
        if start.elapsed() > deadline {
            bail!("the source did not finish within {deadline:?}: {}", tx.stderr());
        }
        for agent in [&s.agent_a, &s.agent_b] {
            let flows = agent.try_status().map(|st| st["flows"].clone()).unwrap_or_default();
            for f in flows.as_array().into_iter().flatten().filter(|f| f["destination"] == dst) {
                if let Some(p) = f["data_path"].as_str().filter(|p| !paths.iter().any(|x| x == p)) {
                    paths.push(p.to_string());
                }
                if agent.node.name == "a" && last_print.elapsed() >= Duration::from_secs(3) {
                    last_print = Instant::now();
                    let mb = f["bytes_out"].as_u64().unwrap_or(0) as f64 / 1e6;
                    let peer = f["peer_identity"].as_str().unwrap_or("-");
                    let path = f["data_path"].as_str().unwrap_or("-");
                    println!(
                        "  {:>5.1} s  agent a: flow to {peer}, {path}, {mb:.1} MB out",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(paths)
}

/// Identities, data path, close reasons and byte counts from the agents' "flow closed" records.
fn check_flows(s: &TwoNodes, r: &mut Report, live_paths: &[String]) -> Result<()> {
    let logged = Duration::from_secs(10);
    let a = agent_log::wait_closed(&s.agent_a, &r.destination, 1, logged)?;
    let b = agent_log::wait_closed(&s.agent_b, &r.destination, 1, logged)?;
    let (a, b) = (a.first().ok_or_else(|| anyhow!("no record"))?, b.first().ok_or_else(|| anyhow!("no record"))?);
    r.source_identity = a.local_identity.clone();
    r.destination_identity = a.peer_identity.clone();
    let ids_ok = a.is_outbound()
        && !b.is_outbound()
        && (a.local_identity == s.source_id() && b.peer_identity == s.source_id())
        && (a.peer_identity == s.receiver_id() && b.local_identity == s.receiver_id());
    let detail = format!(
        "agent a: {} -> {}; agent b: {} <- {}",
        a.local_identity, a.peer_identity, b.local_identity, b.peer_identity
    );
    r.check("identities", ids_ok, detail);

    let mut paths: Vec<&str> = live_paths.iter().map(String::as_str).collect();
    paths.extend([a.data_path.as_str(), b.data_path.as_str()]);
    paths.sort_unstable();
    paths.dedup();
    let known = !live_paths.is_empty() && paths.len() == 1 && (paths[0] == "userspace" || paths[0] == "ktls");
    r.data_path = paths.join("+");
    let detail = format!("live flows (meshd status): {live_paths:?}; logged: a {}, b {}", a.data_path, b.data_path);
    r.check("data_path", known, detail);

    let clean = a.reason == "done" && b.reason == "done";
    r.check("flows_closed_cleanly", clean, format!("agent a: {}; agent b: {}", a.reason, b.reason));
    (r.sizes.through_agent_a, r.sizes.through_agent_b) = (a.bytes_out, b.bytes_in);
    let bytes_ok = a.bytes_out == r.sizes.sent_file && b.bytes_in == r.sizes.sent_file;
    let detail = format!("sent {}, agent a out {}, agent b in {}", r.sizes.sent_file, a.bytes_out, b.bytes_in);
    r.check("bytes_accounted", bytes_ok, detail);
    r.flow_agent_a = Some(a.clone());
    r.flow_agent_b = Some(b.clone());
    Ok(())
}

/// No process left in the pods, no live flow left in the agents.
fn check_leftovers<const N: usize>(s: &TwoNodes, r: &mut Report, procs: [&mut Proc; N]) {
    for p in procs {
        p.kill();
    }
    let left = s.pod_processes();
    let flows_a = agent_log::wait_no_live_flows(&s.agent_a, Duration::from_secs(5)).err();
    let flows_b = agent_log::wait_no_live_flows(&s.agent_b, Duration::from_secs(5)).err();
    let ok = left.is_empty() && flows_a.is_none() && flows_b.is_none();
    r.check("nothing_left_running", ok, format!("pod processes {left:?}; live flows a {flows_a:?}, b {flows_b:?}"));
}
