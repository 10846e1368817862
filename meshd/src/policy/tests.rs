use super::*;
use crate::identity::TrustDomain;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/{s}")).unwrap()
}

fn parse(text: &str) -> Result<Policy, Error> {
    Policy::parse("test.yaml", text, &td())
}

const POLICY: &str = r#"
endpoints:
  - { address: 10.100.1.2, spiffe_id: "spiffe://cluster.local/ns/media/sa/packager", labels: { app: packager } }
  - { address: 10.100.1.3, spiffe_id: "spiffe://cluster.local/ns/media/sa/origin" }
defaults:
  - { namespace: locked, action: deny }
policies:
  - name: packager-ingest
    namespace: media
    selector: { labels: { app: packager } }
    action: allow
    rules:
      - from: { principals: [ "spiffe://cluster.local/ns/media/sa/encoder" ] }
        to: { ports: [ 9000, "8000-8100" ] }
      - from: { namespaces: [ "ingest-*" ] }
  - name: no-debug
    namespace: media
    action: deny
    rules:
      - to: { ports: [ 8080 ] }
"#;

#[test]
fn decisions_follow_deny_then_allow_then_defaults() {
    let p = parse(POLICY).unwrap();
    let labels: BTreeMap<String, String> = [("app".to_string(), "packager".to_string())].into();
    let none = BTreeMap::new();
    let packager = id("ns/media/sa/packager");
    let target = Target { spiffe_id: &packager, labels: &labels };
    let encoder = id("ns/media/sa/encoder");
    assert_eq!(p.decide(&encoder, target, 9000), Decision::Allow, "principal and port");
    assert_eq!(p.decide(&encoder, target, 8050), Decision::Allow, "port range");
    assert!(
        matches!(p.decide(&encoder, target, 9001), Decision::Deny(_)),
        "an ALLOW policy selects it: other ports deny"
    );
    assert!(
        matches!(p.decide(&encoder, target, 8080), Decision::Deny(ref r) if r.contains("no-debug")),
        "deny wins over allow"
    );
    assert_eq!(p.decide(&id("ns/ingest-eu/sa/cam"), target, 1), Decision::Allow, "namespace wildcard");
    assert!(matches!(p.decide(&id("ns/other/sa/x"), target, 9000), Decision::Deny(_)));
    let origin = id("ns/media/sa/origin");
    let unselected = Target { spiffe_id: &origin, labels: &none };
    assert_eq!(p.decide(&encoder, unselected, 9001), Decision::Allow, "no ALLOW policy selects it: allow");
    assert!(matches!(p.decide(&encoder, unselected, 8080), Decision::Deny(_)), "but the namespace-wide deny applies");
    let locked = id("ns/locked/sa/vault");
    let locked = Target { spiffe_id: &locked, labels: &none };
    assert!(
        matches!(p.decide(&encoder, locked, 1), Decision::Deny(ref r) if r.contains("default")),
        "namespace default"
    );
}

#[test]
fn compiled_entries_match_decisions_for_every_port() {
    let p = parse(POLICY).unwrap();
    let mut numbers = std::collections::HashMap::new();
    let sources = vec![(1, id("ns/media/sa/encoder")), (2, id("ns/other/sa/x"))];
    let c = compile::compile(&p, &sources, |k| {
        let next = 100 + numbers.len() as u32;
        *numbers.entry(k.clone()).or_insert(next)
    });
    assert_eq!(c.identities.len(), 2);
    assert_eq!(c.deferred_pairs, 0);
    // Reproduce the BPF lookup (exact port, then port 0) and compare with `decide` everywhere.
    for (addr, dst_n) in &c.identities {
        let (_, dst_id, labels) = p.endpoints.iter().find(|e| e.0 == *addr).unwrap();
        for (src_n, src_id) in &sources {
            for port in [1u16, 7999, 8000, 8050, 8080, 8100, 8101, 9000, 9001, 65535] {
                let lookup =
                    |q: u16| c.verdicts.iter().find(|v| v.0 == *src_n && v.1 == *dst_n && v.2 == q).map(|v| v.3);
                let bpf = lookup(port).or_else(|| lookup(0)).expect("every pair has a port-0 entry");
                let want = p.decide(src_id, Target { spiffe_id: dst_id, labels }, port);
                assert_eq!(
                    bpf == meshd_common::maps::VERDICT_ALLOW,
                    want == Decision::Allow,
                    "{src_id} → {dst_id}:{port}"
                );
            }
        }
    }
}

#[test]
fn malformed_policies_name_the_place_and_the_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "ns/media/sa/encoder\" ]",
            "ns/media/sa/encoder\", \"spiffe:/x\" ]",
            "policies[0] (packager-ingest).rules[0].from.principals[1]",
        ),
        ("ns/media/sa/encoder\" ]", "ns/media/sa/*/x*\" ]", "principals[0]"),
        ("\"ingest-*\"", "\"Ingest_*\"", "from.namespaces[0]"),
        ("[ 8080 ]", "[ 0 ]", "rules[0].to.ports[0]"),
        ("\"8000-8100\"", "\"8100-8000\"", "to.ports[1]"),
        ("address: 10.100.1.3", "address: 10.100.1.2", "endpoints[1].address"),
        ("name: no-debug", "name: packager-ingest", "policies[1] (packager-ingest).name"),
        ("{ namespace: locked, action: deny }", "{ action: deny }", "defaults[0]"),
        ("cluster.local/ns/media/sa/origin\"", "other.org/ns/media/sa/origin\"", "endpoints[1].spiffe_id"),
    ];
    for (from, to, place) in cases {
        assert!(POLICY.contains(from), "{from}");
        let err = parse(&POLICY.replace(from, to)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Invalid { .. }) && text.contains(place) && text.contains("test.yaml"),
            "{to}: {text}"
        );
    }
    let dup = POLICY
        .replace("      - to: { ports: [ 8080 ] }", "      - to: { ports: [ 8080 ] }\n      - to: { ports: [ 8080 ] }");
    assert!(parse(&dup).unwrap_err().to_string().contains("duplicates rules[0]"));
    for text in [
        POLICY.replace("principals:", "prinicpals:"),
        "policies: [".into(),
        POLICY.replace("action: deny\n    rules", "action: maybe\n    rules"),
    ] {
        assert!(matches!(parse(&text), Err(Error::Parse { .. })), "{text}");
    }
    let huge = format!("{POLICY}\n#{}", "x".repeat(10 << 20));
    assert!(matches!(parse(&huge), Err(Error::TooLarge { .. })));
}

#[test]
fn peer_authentication_modes_and_wide_port_ranges() {
    let text = r#"
peer_authentication:
  - { namespace: media, mode: strict, allow_plaintext_from: [ 10.100.1.1/32 ] }
  - { workload: "spiffe://cluster.local/ns/media/sa/legacy", mode: permissive }
endpoints:
  - { address: 10.0.0.9, spiffe_id: "spiffe://cluster.local/ns/media/sa/legacy" }
policies:
  - { name: wide, namespace: media, action: deny, rules: [ { to: { ports: [ "1000-9000" ] } } ] }
"#;
    let p = parse(text).unwrap();
    assert_eq!(p.mode(&id("ns/media/sa/enc")), Some(Mode::Strict));
    assert_eq!(p.mode(&id("ns/media/sa/legacy")), Some(Mode::Permissive), "a workload entry wins");
    assert_eq!(p.mode(&id("ns/other/sa/x")), None);
    assert_eq!(p.plaintext_allow, vec![("10.100.1.1".parse().unwrap(), 32)]);
    let c = compile::compile(&p, &[(1, id("ns/media/sa/enc"))], |_| 7);
    assert_eq!(c.deferred_pairs, 1, "8001 denied ports are too many exceptions: left to the destination");
    assert!(c.verdicts.is_empty());
}
