//! Privileged: a real Prometheus server (Debian's package) scrapes node a's agent while an
//! FFmpeg MPEG-TS stream at a constant mux rate runs from a pod on node a to a pod on node b.
//! PromQL must see one flow, its identities, and a byte rate matching the stream's bitrate.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use meshd_tests::{
    cluster::AgentOptions,
    http::{encode_query, get},
    paths, procs, require, Agent, Cluster, Node,
};
use serde_json::Value;

/// The stream's mux rate: 2 Mbit/s of MPEG-TS, padded to a constant rate by the muxer.
const MUXRATE_BITS: u64 = 2_000_000;
const PROMETHEUS: &str = "127.0.0.1:9090";

fn prometheus(node: &Node) -> procs::Background {
    require::program("prometheus", "prometheus");
    let dir = node.run_dir().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global: { scrape_interval: 1s, evaluation_interval: 1s }\n\
         scrape_configs:\n  - job_name: meshd\n    static_configs: [ { targets: [\"127.0.0.1:15020\"] } ]\n",
    )
    .expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let mut cmd = node.command("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    let child = cmd.spawn().expect("spawn prometheus");
    let bg = procs::Background { child, what: "prometheus".into() };
    let addr: SocketAddr = PROMETHEUS.parse().expect("addr");
    let start = Instant::now();
    while !matches!(get(&node.netns_path(), addr, "/-/ready"), Ok((200, _))) {
        assert!(start.elapsed() < Duration::from_secs(20), "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    bg
}

/// Runs an instant PromQL query inside `node`'s namespace; returns the result vector.
fn query(node: &Node, promql: &str) -> Vec<Value> {
    let path = format!("/api/v1/query?query={}", encode_query(promql));
    let (status, body) = get(&node.netns_path(), PROMETHEUS.parse().expect("addr"), &path).expect("query prometheus");
    assert_eq!(status, 200, "{promql}: {body}");
    let v: Value = serde_json::from_str(&body).expect("prometheus answers JSON");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn prometheus_sees_an_ffmpeg_stream_with_its_identities_and_bitrate() {
    require::program("ffmpeg", "ffmpeg");
    let mut c = Cluster::new("prometheus-ffmpeg");
    let (a, b) = (c.add_node("a"), c.add_node("b"));
    let (client, server) = (c.add_pod("a", "encoder"), c.add_pod("b", "packager"));
    let json = AgentOptions { env: vec![("MESHD_LOG_FORMAT".into(), "json".into())], ..AgentOptions::default() };
    let agent_a = Agent::start(&a, Agent::config(&c, &a, &[&client], &json), &json);
    let opts = AgentOptions::default();
    let _agent_b = Agent::start(&b, Agent::config(&c, &b, &[&server], &opts), &opts);
    let _prom = prometheus(&a);
    let mut sink = server.command(paths::bin("testkit"));
    sink.args(["sink", "0.0.0.0:9000"]);
    let _sink = procs::spawn_ready(sink, "sink", "listening");

    let mut ffmpeg = client.command("ffmpeg");
    ffmpeg
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-t", "24", "-c:v", "mpeg2video", "-b:v", "1000k", "-minrate", "1000k", "-maxrate", "1000k"])
        .args(["-bufsize", "500k", "-muxrate", &MUXRATE_BITS.to_string(), "-f", "mpegts"])
        .arg(format!("tcp://{}:9000", server.ip))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let ffmpeg = ffmpeg.spawn().expect("spawn ffmpeg");
    let _ffmpeg = procs::Background { child: ffmpeg, what: "ffmpeg".into() };
    std::thread::sleep(Duration::from_secs(16));

    let (src, dst) = (client.spiffe_id(&c.trust_domain), server.spiffe_id(&c.trust_domain));
    let up = query(&a, "up{job=\"meshd\"}");
    assert_eq!(up.first().map(value), Some(1.0), "Prometheus parses the agent's OpenMetrics exposition: {up:?}");
    let active = query(&a, "meshd_flows_active{direction=\"outbound\"}");
    assert_eq!(active.len(), 1, "one outbound flow: {active:?}");
    assert_eq!(value(&active[0]), 1.0);
    let m = &active[0]["metric"];
    assert_eq!((m["src"].as_str(), m["dst"].as_str()), (Some(src.as_str()), Some(dst.as_str())), "{m}");
    assert!(m["data_path"] == "userspace" || m["data_path"] == "ktls", "{m}");
    let opened = query(&a, "sum(meshd_flows_opened_total)");
    assert_eq!(opened.first().map(value), Some(1.0), "{opened:?}");
    // Bytes are counted live: the flow is still open, and the rate is the stream's.
    let rate = query(&a, "sum(rate(meshd_flow_sent_bytes_total{direction=\"outbound\"}[8s]))");
    let bytes_per_sec = rate.first().map(value).unwrap_or(0.0);
    let want = MUXRATE_BITS as f64 / 8.0;
    eprintln!("PromQL byte rate {bytes_per_sec:.0} B/s; the stream's mux rate {want:.0} B/s");
    assert!(
        (bytes_per_sec - want).abs() <= want * 0.10,
        "byte rate {bytes_per_sec:.0} B/s must be within 10% of the stream's {want:.0} B/s"
    );
    let hs = query(&a, "sum(meshd_handshake_duration_seconds_count{direction=\"outbound\"})");
    assert_eq!(hs.first().map(value), Some(1.0), "{hs:?}");
    assert!(started.elapsed() < Duration::from_secs(24), "the queries ran while the stream was live");

    // Every query of the Grafana dashboard is valid PromQL over these metrics.
    let dashboard: Value =
        serde_json::from_str(include_str!("../../deploy/grafana/meshd-dashboard.json")).expect("JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    for e in exprs {
        let e = e.replace("$instance", ".*").replace("$__rate_interval", "8s");
        let path = format!("/api/v1/query?query={}", encode_query(&e));
        let (status, body) = get(&a.netns_path(), PROMETHEUS.parse().expect("addr"), &path).expect("query");
        assert_eq!(status, 200, "dashboard query {e}: {body}");
    }

    // The access log (JSON) has the open line with identities and the original destination.
    let log = agent_a.log();
    let open: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "meshd::access" && v["event"] == "open")
        .collect();
    assert_eq!(open.len(), 1, "one access-log open line:\n{log}");
    assert_eq!(open[0]["src_id"], src.as_str());
    assert_eq!(open[0]["dst_id"], dst.as_str());
    assert_eq!(open[0]["destination"], format!("{}:9000", server.ip));
}
