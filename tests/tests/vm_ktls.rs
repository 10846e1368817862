//! VM tier: kernel TLS, proven inside Debian kernels that have it (`cargo xtask test --tier vm`
//! boots them under qemu and runs this file there). On a kernel without kTLS these tests fail
//! with a message saying so — they never pass silently.
//!
//! Timings inside an emulated guest are not real-CPU numbers: the CPU comparison reports a
//! ratio of two paths measured in the same guest run, and asserts nothing about speed.

use std::{collections::BTreeMap, time::Duration};

use meshd::config::DataPathMode;
use meshd_tests::{
    capture::{self, Capture},
    cluster::AgentOptions,
    paths,
    pattern::Pattern,
    procs, Agent, Cluster, Pod,
};

const T: Duration = Duration::from_secs(600);

fn require_ktls() -> meshd::proxy::ktls::KtlsSupport {
    let s = meshd::proxy::ktls::probe();
    assert!(
        s.available,
        "kernel TLS is unavailable on this kernel ({}): this test belongs to the VM tier, run `cargo xtask test --tier vm`",
        s.detail
    );
    s
}

/// `/proc/net/tls_stat` summed over the given pods' network namespaces (the counters are per
/// namespace, and the agents' kTLS sockets live in the pods' namespaces).
fn tls_stat(pods: &[&Pod]) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for pod in pods {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, "cat", "/proc/net/tls_stat"]);
        let text = procs::run_ok(cmd, "read tls_stat", Duration::from_secs(10));
        for l in text.lines() {
            let mut it = l.split_whitespace();
            if let (Some(k), Some(Ok(v))) = (it.next(), it.next().map(str::parse::<u64>)) {
                *sum.entry(k.to_string()).or_insert(0) += v;
            }
        }
    }
    sum
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// CPU time an agent process has used, in seconds: (user, system). Kernel TLS encrypts in the
/// agent's splice calls, so that work shows as the agent's system time.
fn cpu_times(agent: &Agent) -> (f64, f64) {
    let pid = agent.pid().expect("agent pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read agent stat");
    let after_comm = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let ticks = |i: usize| fields[i].parse::<u64>().unwrap_or(0) as f64 / hz;
    (ticks(11), ticks(12))
}

fn cpu_seconds(agent: &Agent) -> f64 {
    let (u, s) = cpu_times(agent);
    u + s
}

/// Writes a result the VM runner copies into `target/vm-test/report.json`.
fn report(name: &str, value: serde_json::Value) {
    if let Some(dir) = std::env::var_os("MESHD_VM_OUT") {
        let path = std::path::Path::new(&dir).join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&value).expect("json")).expect("write result");
    }
    println!("{name}: {value}");
}

fn testkit(pod: &Pod, args: &[&str]) -> std::process::Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

fn opts(mode: DataPathMode) -> AgentOptions {
    AgentOptions { data_path: mode, ..AgentOptions::default() }
}

/// Streams `bytes` from `from` to a sink on `to`, checking the sink got exactly them.
fn stream(from: &Pod, to: &Pod, port: u16, bytes: u64) {
    let _sink = procs::spawn_ready(testkit(to, &["sink", &format!("0.0.0.0:{port}")]), "sink", "listening");
    let got = procs::run_ok(
        testkit(from, &["source", &format!("{}:{port}", to.ip), "--bytes", &bytes.to_string()]),
        "source",
        T,
    );
    let want = procs::run_ok(testkit(from, &["expect", "--bytes", &bytes.to_string()]), "expect", T);
    assert_eq!(got.trim(), want.trim(), "the sink must receive exactly the {bytes} bytes sent");
}

fn flow_paths(agent: &Agent) -> Vec<String> {
    agent
        .wait_log("flow closed", 1, Duration::from_secs(10))
        .lines()
        .filter_map(|l| l.split_once("flow closed").map(|(_, fields)| fields.to_string()))
        .filter_map(|f| {
            f.split("data_path=")
                .nth(1)
                .map(|r| r.split_whitespace().next().unwrap_or("").trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn kernel_tls_carries_a_checksummed_256_mb_stream_and_only_tls_crosses_the_link() {
    const BYTES: u64 = 256 << 20;
    let support = require_ktls();
    let mut c = Cluster::new("vm-ktls-256");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let o = opts(DataPathMode::Ktls);
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &o), &o);
    let agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &o), &o);
    assert_eq!(agent_a.status()["data_path"]["new_flows"], "ktls");
    // Only the start of the stream is captured: the guest has little memory.
    let mut cap = Capture::start_limited(c.node("a"), "wan0", "tcp port 15008", Some(12_000));
    let before = tls_stat(&[&client, &server]);
    let cpu0 = cpu_seconds(&agent_a) + cpu_seconds(&agent_b);
    stream(&client, &server, 9000, BYTES);
    let cpu = cpu_seconds(&agent_a) + cpu_seconds(&agent_b) - cpu0;
    let after = tls_stat(&[&client, &server]);
    // One flow: both agents (same kernel) installed one transmit and one receive key each.
    for key in ["TlsTxSw", "TlsRxSw"] {
        assert_eq!(
            delta(&before, &after, key),
            2,
            "{key} must rise by 2 for one mesh connection: {before:?} → {after:?}"
        );
    }
    assert_eq!(flow_paths(&agent_a), ["ktls"], "agent a: {}", agent_a.log_tail(20));
    assert_eq!(flow_paths(&agent_b), ["ktls"], "agent b: {}", agent_b.log_tail(20));
    // /metrics reads tls_stat in the workload's namespace and labels the flow's data path.
    let m = agent_a.metrics();
    let tx = m.lines().find(|l| {
        l.starts_with("meshd_ktls_sessions_total{") && l.contains("direction=\"tx\"") && l.contains("mode=\"sw\"")
    });
    assert!(tx.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).is_some_and(|v| v >= 1.0), "{m}");
    assert!(m.lines().any(|l| l.starts_with("meshd_flows_closed_total{") && l.contains("data_path=\"ktls\"")), "{m}");
    let wire = cap.stop();
    let tls = capture::tls::check(&cap.file, 15008);
    assert!(tls.violations.is_empty(), "non-TLS payload on the mesh port: {:?}", tls.violations);
    assert!(tls.directions == 2 && tls.records > 100, "the capture must hold the flow: {tls:?}");
    for offset in [0u64, 4096, 1 << 20] {
        assert_eq!(capture::count(&wire, &Pattern::sample(1, offset, 48)), 0, "plaintext at {offset} on the wire");
    }
    report(
        "ktls_stream",
        serde_json::json!({
            "bytes": BYTES, "kernel_rekey": support.rekey, "agents_cpu_seconds": cpu,
            "tls_stat_delta": { "TlsTxSw": delta(&before, &after, "TlsTxSw"), "TlsRxSw": delta(&before, &after, "TlsRxSw") },
            "captured_tls_records": tls.records,
        }),
    );
}

#[test]
fn agent_cpu_per_byte_on_kernel_tls_against_userspace() {
    const BYTES: u64 = 32 << 20;
    require_ktls();
    let mut per_byte = BTreeMap::new();
    for mode in [DataPathMode::Ktls, DataPathMode::Userspace] {
        let mut c = Cluster::new("vm-cpu");
        let (a, b) = (c.add_node("a"), c.add_node("b"));
        let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
        let o = opts(mode);
        let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &o), &o);
        let agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &o), &o);
        let both = || {
            let ((ua, sa), (ub, sb)) = (cpu_times(&agent_a), cpu_times(&agent_b));
            (ua + ub, sa + sb)
        };
        let (u0, s0) = both();
        let started = std::time::Instant::now();
        stream(&client, &server, 9000, BYTES);
        let wall = started.elapsed().as_secs_f64();
        let (u1, s1) = both();
        let label = if mode == DataPathMode::Ktls { "ktls" } else { "userspace" };
        assert_eq!(flow_paths(&agent_a), [label]);
        assert!(u1 + s1 > u0 + s0, "the agents' CPU time must be measurable");
        let ns = |secs: f64| secs * 1e9 / BYTES as f64;
        per_byte.insert(label, (ns(u1 - u0 + s1 - s0), ns(u1 - u0), wall));
    }
    let (k, u) = (per_byte["ktls"], per_byte["userspace"]);
    report(
        "cpu_per_byte",
        serde_json::json!({
            "bytes": BYTES,
            "ktls": { "cpu_ns_per_byte": k.0, "user_cpu_ns_per_byte": k.1, "wall_seconds": k.2 },
            "userspace": { "cpu_ns_per_byte": u.0, "user_cpu_ns_per_byte": u.1, "wall_seconds": u.2 },
            "ktls_over_userspace": k.0 / u.0,
            "ktls_over_userspace_user_cpu": k.1 / u.1.max(1e-9),
            "note": "agent CPU time of both agents in an emulated guest: compare as ratios only; kernel TLS \
                     encrypts inside the agent's splice calls, so its work is the agents' system time",
        }),
    );
}

#[test]
fn a_userspace_agent_and_a_kernel_tls_agent_interoperate() {
    const BYTES: u64 = 16 << 20;
    require_ktls();
    let mut c = Cluster::new("vm-interop");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (pa, pb) = (c.add_pod("a", "pa"), c.add_pod("b", "pb"));
    let (user, kernel) = (opts(DataPathMode::Userspace), opts(DataPathMode::Ktls));
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&pa], &user), &user);
    let agent_b = Agent::start(&b, Agent::config(&c, &b, &[&pb], &kernel), &kernel);
    stream(&pa, &pb, 9000, BYTES); // userspace → kernel TLS
    stream(&pb, &pa, 9001, BYTES); // kernel TLS → userspace
    assert_eq!(flow_paths(&agent_a), ["userspace", "userspace"]);
    assert_eq!(flow_paths(&agent_b), ["ktls", "ktls"]);
}

#[test]
fn the_record_limit_rekeys_where_the_kernel_can_and_closes_cleanly_where_not() {
    const BYTES: u64 = 8 << 20; // ≥ 512 full records
    let support = require_ktls();
    let mut c = Cluster::new("vm-rekey");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
    let o = opts(DataPathMode::Ktls);
    let limited = |mut cfg: meshd::config::Config| {
        cfg.ktls_record_limit = Some(64);
        cfg
    };
    let agent_a = Agent::start(&a, limited(Agent::config(&c, &a, &[&client], &o)), &o);
    let agent_b = Agent::start(&b, limited(Agent::config(&c, &b, &[&server], &o)), &o);
    let _sink = procs::spawn_ready(testkit(&server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
    let before = tls_stat(&[&client, &server]);
    let out = procs::run(
        testkit(&client, &["source", &format!("{}:9000", server.ip), "--bytes", &BYTES.to_string()]),
        "source",
        T,
    );
    let after = tls_stat(&[&client, &server]);
    let wait = Duration::from_secs(10);
    let (log_a, log_b) = if support.rekey {
        (agent_a.wait_log("flow closed", 1, wait), agent_b.wait_log("flow closed", 1, wait))
    } else {
        (agent_a.wait_log("record limit", 1, wait), agent_b.log())
    };
    if support.rekey {
        assert!(out.status.success(), "the stream must survive rekeying: {}", String::from_utf8_lossy(&out.stderr));
        let want = procs::run_ok(testkit(&client, &["expect", "--bytes", &BYTES.to_string()]), "expect", T);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want.trim());
        let updates = log_a.matches("transmit key updated").count();
        // 512 full records in windows of at most 64 per key: at least 7 key changes.
        assert!(
            updates >= (BYTES / (64 * 16384)) as usize - 1,
            "agent a must rekey every 64 records ({updates} updates)"
        );
        assert!(log_b.matches("receive key updated").count() >= updates, "agent b must follow every update");
        assert!(delta(&before, &after, "TlsTxRekeyOk") >= updates as u64, "{before:?} → {after:?}");
        report("rekey", serde_json::json!({ "kernel_rekey": true, "key_updates": updates }));
    } else {
        assert!(!out.status.success(), "without kernel rekey the flow must end at the limit, not go on");
        assert!(log_a.contains("record limit"), "agent a must say why the flow ended:\n{}", agent_a.log_tail(20));
        report("rekey", serde_json::json!({ "kernel_rekey": false, "closed_at_limit": true }));
    }
}

#[test]
fn an_ffmpeg_mpegts_stream_over_kernel_tls_is_frame_exact() {
    use meshd_tests::media::{agent_log, apps::Push, scenario::TwoNodes, verify, Clip};
    require_ktls();
    let s = TwoNodes::start("vm-ffmpeg");
    let clip = Clip::short(4);
    let (sent, received) = (s.file("sent.ts"), s.file("received.ts"));
    let mut rx = s.ffmpeg(&s.receiver, "receiver", &Push::MpegTsTcp.receiver(&received)).expect("receiver");
    rx.wait_listening(Push::MpegTsTcp.port(), Duration::from_secs(60)).expect("receiver listening");
    let mut tx = s
        .ffmpeg(&s.source, "sender", &Push::MpegTsTcp.live_sender(&clip, false, s.receiver.ip, &sent))
        .expect("sender");
    tx.wait_ok(Duration::from_secs(300)).expect("the sender finishes");
    rx.wait_ok(Duration::from_secs(60)).expect("the receiver ends with the stream");
    let frames = verify::frames(&sent, &received).expect("decode both");
    assert!(frames.identical(), "{frames}");
    let dst = format!("{}:{}", s.receiver.ip, Push::MpegTsTcp.port());
    for agent in [&s.agent_a, &s.agent_b] {
        let flows = agent_log::wait_closed(agent, &dst, 1, Duration::from_secs(20)).expect("flow records");
        assert!(flows.iter().all(|f| f.data_path == "ktls"), "agent {}: {flows:?}", agent.node.name);
    }
    report("ffmpeg", serde_json::json!({ "frames_identical": true, "video_frames": frames.video_sent }));
}
