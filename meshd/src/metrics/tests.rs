//! The exposition is parsed line by line with the OpenMetrics text grammar's rules that matter
//! here (descriptors before samples, suffixes allowed per type, label syntax, `# EOF` last);
//! the privileged tier also checks it with the Prometheus reference parser.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::*;
use crate::flows::{DataPath, FlowGuard};

/// A parsed exposition: family → (type, samples as (name, labels, value)).
pub type Families = BTreeMap<String, (String, Vec<(String, BTreeMap<String, String>, f64)>)>;

pub fn parse(text: &str) -> Families {
    let mut families = Families::new();
    let mut current: Option<String> = None;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "an exposition ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
            assert!(valid_name(name), "metric name {name:?}");
            assert!(!families.contains_key(name), "family {name} declared twice");
            families.insert(name.into(), (ty.into(), Vec::new()));
            current = Some(name.into());
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
        } else {
            let family = current.as_ref().expect("a sample after its descriptor");
            let (name, labels, value) = sample(line);
            let suffix = name.strip_prefix(family.as_str()).unwrap_or_else(|| panic!("{name} outside {family}"));
            let ty = families[family].0.clone();
            let allowed: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "gauge" => &[""],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                other => panic!("unexpected type {other}"),
            };
            assert!(allowed.contains(&suffix), "{name}: suffix {suffix:?} not allowed for a {ty}");
            families.get_mut(family).expect("family").1.push((name, labels, value));
        }
    }
    families
}

fn valid_name(n: &str) -> bool {
    n.chars().enumerate().all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
}

fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("name value");
    let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line:?}"));
    let Some((name, rest)) = head.split_once('{') else { return (head.into(), BTreeMap::new(), value) };
    let body = rest.strip_suffix('}').expect("labels end with }");
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(valid_name(&key) && !key.contains(':'), "label name {key:?} in {line:?}");
        assert_eq!(chars.next(), Some('"'), "quoted value in {line:?}");
        let mut v = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '\\' => v.push(chars.next().expect("escaped char")),
                '"' => break,
                c => v.push(c),
            }
        }
        assert!(labels.insert(key, v).is_none(), "duplicate label in {line:?}");
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.into(), labels, value)
}

fn open(table: &Arc<FlowTable>, src: &str, dst: &str, port: u16) -> FlowGuard {
    let g = table.open(
        Direction::Outbound,
        "enc",
        src,
        "10.100.1.2:9000".parse().unwrap(),
        format!("127.0.0.1:{port}").parse().unwrap(),
    );
    let _ = g.flow.peer_identity.set(dst.into());
    let _ = g.flow.data_path.set(DataPath::Userspace);
    g
}

fn series(f: &Families, family: &str) -> usize {
    f.get(family).map_or(0, |(_, s)| s.iter().filter(|(n, ..)| !n.ends_with("_created")).count())
}

#[test]
fn families_have_the_documented_names_types_and_labels() {
    let table = Arc::new(FlowTable::default());
    let m = Metrics::new(Arc::clone(&table), 100);
    let g = open(&table, "spiffe://t/ns/m/sa/enc", "spiffe://t/ns/m/sa/dec", 40000);
    m.flow_opened(&g.flow);
    m.handshake(Direction::Outbound, Duration::from_millis(3));
    m.handshake_failed(Direction::Inbound, "bad_certificate");
    g.flow.bytes_out.fetch_add(1000, Ordering::Relaxed);
    m.sample_flow(&g.flow);
    let f = parse(&m.encode().unwrap());
    let want = [
        ("meshd_build", "info"),
        ("meshd_flows_opened", "counter"),
        ("meshd_flows_closed", "counter"),
        ("meshd_flows_active", "gauge"),
        ("meshd_flow_sent_bytes", "counter"),
        ("meshd_flow_received_bytes", "counter"),
        ("meshd_flow_setup_failures", "counter"),
        ("meshd_handshake_duration_seconds", "histogram"),
        ("meshd_handshake_failures", "counter"),
        ("meshd_tcp_rtt_seconds", "gauge"),
        ("meshd_tcp_retransmits", "counter"),
        ("meshd_policy_denials", "counter"),
        ("meshd_ebpf_errors", "counter"),
        ("meshd_ebpf_events", "counter"),
        ("meshd_svid_expiry_timestamp_seconds", "gauge"),
        ("meshd_svid_rotations", "counter"),
        ("meshd_ktls_errors", "counter"),
        ("meshd_ready", "gauge"),
    ];
    for (name, ty) in want {
        assert_eq!(f.get(name).map(|(t, _)| t.as_str()), Some(ty), "{name}");
    }
    let (_, sent) = &f["meshd_flow_sent_bytes"];
    let (_, labels, value) = sent.iter().find(|(n, ..)| n == "meshd_flow_sent_bytes_total").unwrap();
    assert_eq!(*value, 1000.0);
    let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
    assert_eq!(keys, ["data_path", "direction", "dst", "src"]);
    assert_eq!(labels["src"], "spiffe://t/ns/m/sa/enc");
    assert_eq!(series(&f, "meshd_flows_active"), 1);
    assert_eq!(series(&f, "meshd_policy_denials"), 0, "registered with no series until used");
    m.policy_denied(PolicySide::Destination, "no_matching_rule", "spiffe://t/a", "spiffe://t/b");
    let f = parse(&m.encode().unwrap());
    assert_eq!(series(&f, "meshd_policy_denials"), 1);
    drop(g);
}

#[test]
fn a_thousand_short_flows_make_one_series_per_family() {
    let table = Arc::new(FlowTable::default());
    let m = Metrics::new(Arc::clone(&table), 100);
    for port in 0..1000u16 {
        let g = open(&table, "spiffe://t/ns/m/sa/enc", "spiffe://t/ns/m/sa/dec", 30000 + port);
        m.flow_opened(&g.flow);
        g.flow.bytes_out.fetch_add(10, Ordering::Relaxed);
        m.flow_closed(&g.flow, "done");
    }
    let text = m.encode().unwrap();
    assert!(!text.contains("127.0.0.1") && !text.contains("10.100.1.2"), "no address is a label");
    let f = parse(&text);
    for family in ["meshd_flows_opened", "meshd_flows_closed", "meshd_flow_sent_bytes"] {
        assert_eq!(series(&f, family), 1, "{family}");
    }
    assert_eq!(f["meshd_flows_closed"].1[0].2, 1000.0);
    assert_eq!(f["meshd_flow_sent_bytes"].1[0].2, 10_000.0);
}

#[test]
fn distinct_identity_pairs_beyond_the_cap_fold_into_other() {
    let table = Arc::new(FlowTable::default());
    let m = Metrics::new(Arc::clone(&table), 50);
    for i in 0..1000 {
        let g = open(&table, &format!("spiffe://t/ns/m/sa/client-{i}"), "spiffe://t/ns/m/sa/dec", 1);
        m.flow_opened(&g.flow);
        m.flow_closed(&g.flow, "reset");
    }
    let f = parse(&m.encode().unwrap());
    assert_eq!(series(&f, "meshd_flows_opened"), 51, "50 pairs and the other bucket");
    let other = f["meshd_flows_opened"].1.iter().find(|(_, l, _)| l["src"] == "other").unwrap();
    assert_eq!(other.2, 950.0);
    let overflow: Vec<f64> = f["meshd_metrics_identity_overflow"].1.iter().map(|s| s.2).collect();
    assert!(overflow.iter().any(|v| *v >= 1900.0), "{overflow:?}");
}

#[test]
fn setup_failures_are_not_closed_flows() {
    let table = Arc::new(FlowTable::default());
    let m = Metrics::new(Arc::clone(&table), 10);
    let g = table.open(
        Direction::Outbound,
        "enc",
        "spiffe://t/a",
        "10.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    m.flow_closed(&g.flow, "refused");
    m.setup_failed(Direction::Inbound, "denied");
    let f = parse(&m.encode().unwrap());
    assert_eq!(series(&f, "meshd_flows_closed"), 0);
    assert_eq!(series(&f, "meshd_flow_setup_failures"), 2);
}

#[test]
fn the_grafana_dashboard_uses_only_exported_names() {
    let dashboard = include_str!("../../../deploy/grafana/meshd-dashboard.json");
    let table = Arc::new(FlowTable::default());
    let f = parse(&Metrics::new(table, 10).encode().unwrap());
    let suffixes = ["", "_total", "_bucket", "_count", "_sum", "_info"];
    let mut rest = dashboard;
    let mut checked = 0;
    while let Some(i) = rest.find("meshd_") {
        let name: String =
            rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
        rest = &rest[i + name.len()..];
        let known = f.iter().any(|(family, (ty, _))| {
            suffixes.iter().any(|s| name == format!("{family}{s}") && (s.is_empty() || ty != "gauge"))
        });
        assert!(known, "the dashboard uses {name}, which meshd does not export");
        checked += 1;
    }
    assert!(checked > 20, "{checked}");
}

#[test]
fn handshake_errors_map_to_bounded_reasons() {
    use rustls::{AlertDescription, CertificateError, Error as Tls};
    let io = |e: Tls| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    assert_eq!(handshake_reason(&io(Tls::InvalidCertificate(CertificateError::UnknownIssuer))), "bad_certificate");
    let unknown = Tls::AlertReceived(AlertDescription::CertificateUnknown);
    assert_eq!(handshake_reason(&io(unknown)), "peer_rejected_certificate");
    assert_eq!(handshake_reason(&io(Tls::AlertReceived(AlertDescription::InternalError))), "alert");
    assert_eq!(handshake_reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)), "eof");
    assert_eq!(handshake_reason(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)), "io");
}
