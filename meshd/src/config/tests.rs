use std::path::Path;

use super::*;

const GOOD: &str = r#"
node: node-a
trust_domain: cluster.local
identity: { dev_ca: { dir: /tmp/ca, svid_ttl: 30m } }
mesh:
  destinations: [ { cidr: 10.100.0.0/16 }, { cidr: "fd00:100::/32", ports: "80-90" } ]
  exclude: [ { cidr: 10.100.0.1 } ]
workloads:
  - { name: enc, cgroup: pods/enc, netns: /var/run/netns/enc, spiffe_id: "spiffe://cluster.local/ns/media/sa/enc" }
idle_timeout: 5m
"#;

fn parse_yaml(text: &str) -> Result<Config, Error> {
    let path = Path::new("test.yaml");
    let c = Config::parse(path, text)?;
    c.validate().map_err(|(field, message)| Error::Invalid { path: path.into(), field, message })?;
    Ok(c)
}

#[test]
fn a_good_yaml_config_parses_with_defaults() {
    let c = parse_yaml(GOOD).unwrap();
    assert_eq!(c.ports, Ports { capture: 15001, inbound: 15008 });
    let ca = DevCaConfig { dir: "/tmp/ca".into(), svid_ttl: std::time::Duration::from_secs(1800) };
    assert_eq!(c.identity, IdentityConfig { dev_ca: Some(ca), files: None });
    assert_eq!(c.idle_timeout, Some(std::time::Duration::from_secs(300)));
    assert_eq!(c.data_path, DataPathMode::Auto);
    let d = c.mesh.destinations[1].parse().unwrap();
    assert_eq!((d.len, d.ports), (32, (80, 90)));
    assert_eq!(c.mesh.exclude[0].parse().unwrap().len, 32);
    assert_eq!(c.admin_socket(), Path::new("/run/meshd/node-a/admin.sock"));
    assert_eq!(c.admin.http, Some("127.0.0.1:15020".parse().unwrap()), "node-local admin HTTP by default");
    assert_eq!(c.otlp, None, "trace export is off by default");
}

#[test]
fn admin_http_and_otlp_are_configurable() {
    let text = format!("{GOOD}admin: {{ http: \"0.0.0.0:9102\", max_identity_pairs: 50 }}\notlp: {{ endpoint: \"http://127.0.0.1:4318\" }}\n");
    let c = parse_yaml(&text).unwrap();
    assert_eq!(c.admin.http, Some("0.0.0.0:9102".parse().unwrap()));
    assert_eq!(c.admin.max_identity_pairs, Some(50));
    let otlp = c.otlp.as_ref().unwrap();
    assert_eq!((otlp.endpoint.as_str(), otlp.export_interval.as_secs()), ("http://127.0.0.1:4318", 2));
    let off = parse_yaml(&format!("{GOOD}admin: {{ http: null }}\n")).unwrap();
    assert_eq!(off.admin.http, None, "null disables the listener");
    let back = parse_yaml(&serde_yaml::to_string(&off).unwrap()).unwrap();
    assert_eq!(back.admin.http, None, "a disabled listener survives a YAML round trip");
    assert!(parse_yaml(&format!("{GOOD}admin: {{ metrics: true }}\n")).is_err(), "unknown fields are refused");
    let fast = parse_yaml(&format!("{GOOD}otlp: {{ endpoint: \"http://c:4318\", export_interval: 500ms }}\n")).unwrap();
    let back = parse_yaml(&serde_yaml::to_string(&fast).unwrap()).unwrap();
    assert_eq!(back.otlp.unwrap().export_interval, std::time::Duration::from_millis(500), "sub-second round trip");
}

#[test]
fn toml_is_the_same_config() {
    let yaml = parse_yaml(GOOD).unwrap();
    let text = toml::to_string(&yaml).unwrap();
    let back = Config::parse(Path::new("x.toml"), &text).unwrap();
    assert_eq!(back, yaml);
}

#[test]
fn bad_configs_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("node: node-a", "node: Node_A!", "node"),
        ("cidr: 10.100.0.0/16", "cidr: 10.100.0.1/16", "mesh.destinations[0]"),
        ("cidr: 10.100.0.0/16", "cidr: 10.100.0.0/33", "mesh.destinations[0]"),
        ("ports: \"80-90\"", "ports: \"90-80\"", "mesh.destinations[1]"),
        ("sa/enc\"", "sa/enc/..\"", "workloads[0].spiffe_id"),
        ("spiffe://cluster.local/ns", "spiffe://other.org/ns", "workloads[0].spiffe_id"),
        ("netns: /var/run/netns/enc", "netns: enc", "workloads[0].netns"),
        ("idle_timeout: 5m", "idle_timeout: 0s", "idle_timeout"),
        ("idle_timeout: 5m", "idle_timeout: 5m\notlp: { endpoint: \"grpc://x\" }", "otlp.endpoint"),
        ("identity: { dev_ca: { dir: /tmp/ca, svid_ttl: 30m } }", "identity: {}", "identity"),
        ("svid_ttl: 30m", "svid_ttl: 0s", "identity.dev_ca.svid_ttl"),
        ("cidr: 10.100.0.0/16", "cidr: \"::ffff:10.0.0.0/104\"", "mesh.destinations[0]"),
        ("idle_timeout: 5m", "idle_timeout: 5m\nktls_record_limit: 0", "ktls_record_limit"),
    ];
    for (from, to, field) in cases {
        assert!(GOOD.contains(from), "{from}");
        let err = parse_yaml(&GOOD.replace(from, to)).unwrap_err();
        match &err {
            Error::Invalid { field: f, .. } => assert_eq!(f, field, "{err}"),
            other => panic!("{to}: expected an invalid-field error, got {other}"),
        }
        assert!(err.to_string().contains("test.yaml"), "{err}");
    }
}

#[test]
fn too_many_prefixes_and_absurd_durations_are_rejected() {
    let many: Vec<String> = (0..1100).map(|i| format!("{{ cidr: 10.{}.{}.0/24 }}", i / 256, i % 256)).collect();
    let line = "  destinations: [ { cidr: 10.100.0.0/16 }, { cidr: \"fd00:100::/32\", ports: \"80-90\" } ]";
    assert!(GOOD.contains(line));
    let text = GOOD.replace(line, &format!("  destinations: [ {} ]", many.join(", ")));
    let err = parse_yaml(&text).unwrap_err();
    assert!(matches!(&err, Error::Invalid { field, .. } if field == "mesh.destinations"), "{err}");
    assert!(err.to_string().contains("1024"), "{err}");
    let err = parse_yaml(&GOOD.replace("30m", "999999999999999d")).unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
}

#[test]
fn syntax_errors_and_unknown_fields_are_rejected() {
    for text in
        [GOOD.replace("node: node-a", "node: node-a\nnodes: typo"), "node: [".into(), GOOD.replace("30m", "30 parsecs")]
    {
        let err = parse_yaml(&text).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{err}");
    }
    let dup = GOOD.replace(
        "workloads:\n",
        "workloads:\n  - { name: enc, cgroup: pods/x, netns: /x, spiffe_id: \"spiffe://cluster.local/a\" }\n",
    );
    assert!(parse_yaml(&dup).unwrap_err().to_string().contains("enrolled twice"));
    assert!(matches!(Config::parse(Path::new("c.json"), "{}"), Err(Error::Extension { .. })));
}

#[test]
fn the_daemonset_config_and_policy_parse() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/meshd.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]);
    let cm = &docs[2]["data"];
    let config = cm["meshd.yaml"].as_str().unwrap().replace("NODE_NAME", "node-1");
    let c = Config::parse(Path::new("meshd.yaml"), &config).unwrap();
    c.validate().unwrap();
    assert_eq!(c.on_exit, OnExit::KeepClosed);
    let td = crate::identity::TrustDomain::new(&c.trust_domain).unwrap();
    crate::policy::Policy::parse("policy.yaml", cm["policy.yaml"].as_str().unwrap(), &td).unwrap();
    let ds = &docs[3]["spec"]["template"]["spec"];
    assert_eq!(ds["hostNetwork"], serde_yaml::Value::Bool(true));
    let port = ds["containers"][0]["readinessProbe"]["httpGet"]["port"].as_u64().unwrap();
    assert_eq!(Some(port as u16), c.admin.http.map(|a| a.port()), "the probes hit the admin listener");
}
