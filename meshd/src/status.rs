//! `meshd status` as a readable table, rendered from the same JSON `--json` prints.

use std::fmt::Write;

use serde_json::Value;

/// Renders the status JSON for humans.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let str_of = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let _ = writeln!(
        out,
        "node {}  meshd {}  {}",
        str_of(&s["node"]),
        str_of(&s["version"]),
        if s["ready"] == Value::Bool(true) { "ready" } else { "NOT READY" }
    );
    let dp = &s["data_path"];
    let _ = writeln!(
        out,
        "data path: new flows use {} (mode {}; kernel TLS {}{})",
        str_of(&dp["new_flows"]),
        str_of(&dp["mode"]),
        if dp["ktls_available"] == Value::Bool(true) { "available" } else { "unavailable" },
        if dp["ktls_rekey"] == Value::Bool(true) { ", rekey supported" } else { "" },
    );
    let programs: Vec<String> = s["programs"].as_array().map(|a| a.iter().map(str_of).collect()).unwrap_or_default();
    let _ = writeln!(out, "programs: {}  (pins {})", programs.join(", "), str_of(&s["pins"]));
    let _ = writeln!(out, "\nWORKLOAD            IDENTITY                                           SVID EXPIRES");
    for w in s["workloads"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<19} {:<50} {}",
            str_of(&w["name"]),
            str_of(&w["spiffe_id"]),
            w["svid_not_after"].as_str().unwrap_or("-")
        );
    }
    let _ = writeln!(
        out,
        "\nFLOW  DIR       WORKLOAD        DESTINATION            PEER IDENTITY                              PATH       \
         OUT NOW       IN NOW        RTT      RETRANS  TOTAL OUT"
    );
    for f in s["flows"].as_array().into_iter().flatten() {
        let mesh = &f["tcp"]["mesh"];
        let _ = writeln!(
            out,
            "{:<5} {:<9} {:<15} {:<22} {:<42} {:<10} {:>13} {:>13} {:>8} {:>8} {:>10}",
            str_of(&f["id"]),
            str_of(&f["direction"]),
            str_of(&f["workload"]),
            str_of(&f["destination"]),
            f["peer_identity"].as_str().unwrap_or("-"),
            f["data_path"].as_str().unwrap_or("-"),
            rate(now_or_average(f, "out")),
            rate(now_or_average(f, "in")),
            mesh["rtt_us"].as_f64().map_or("-".into(), |us| format!("{:.1}ms", us / 1e3)),
            mesh["total_retrans"].as_u64().map_or("-".into(), |n| n.to_string()),
            bytes(f["bytes_out"].as_f64().unwrap_or(0.0)),
        );
    }
    out
}

/// The last second's rate, or the average since the flow started before the first sample.
fn now_or_average<'a>(f: &'a Value, way: &str) -> &'a Value {
    match &f[format!("current_{way}_bps")] {
        Value::Null => &f[format!("rate_{way}_bps")],
        v => v,
    }
}

fn bytes(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n:.0} B"),
    }
}

fn rate(v: &Value) -> String {
    let bps = v.as_f64().unwrap_or(0.0);
    match bps {
        b if b >= 1e9 => format!("{:.1} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.1} Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kbit/s", b / 1e3),
        b => format!("{b:.0} bit/s"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_workloads_and_flows() {
        let s = json!({
            "node": "a", "version": "0.1.0", "ready": true,
            "data_path": {"new_flows": "userspace", "mode": "auto", "ktls_available": false, "ktls_rekey": false},
            "programs": ["meshd_connect4"], "pins": "/sys/fs/bpf/meshd/a",
            "workloads": [{"name": "enc", "spiffe_id": "spiffe://t/ns/m/sa/enc", "svid_not_after": "2026-12-03"}],
            "flows": [{"id": 1, "direction": "outbound", "workload": "enc", "destination": "10.0.0.1:9000",
                       "peer_identity": "spiffe://t/ns/m/sa/dec", "data_path": "userspace",
                       "rate_out_bps": 8_000_000, "rate_in_bps": 0, "current_out_bps": 4_000_000,
                       "bytes_out": 2_500_000, "tcp": {"mesh": {"rtt_us": 1500, "total_retrans": 3}}}]
        });
        let text = render(&s);
        assert!(text.contains("ready") && text.contains("spiffe://t/ns/m/sa/enc"), "{text}");
        assert!(text.contains("4.0 Mbit/s") && text.contains("10.0.0.1:9000"), "current rate: {text}");
        assert!(text.contains("0 bit/s") && text.contains("1.5ms") && text.contains("2.5 MB"), "{text}");
    }
}
