use super::*;

#[test]
fn valid_ids_parse_into_parts() {
    let cases = [
        ("spiffe://example.org/a", "example.org", "/a"),
        ("spiffe://cluster.local/ns/media/sa/encoder", "cluster.local", "/ns/media/sa/encoder"),
        ("spiffe://a-b_c.9/X.y-Z_0/..a/a..", "a-b_c.9", "/X.y-Z_0/..a/a.."),
        ("spiffe://td/...", "td", "/..."),
    ];
    for (input, td, path) in cases {
        let id = SpiffeId::new(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(id.trust_domain(), td, "{input}");
        assert_eq!(id.path(), path, "{input}");
        assert_eq!(id.to_string(), input);
        assert_eq!(input.parse::<SpiffeId>().ok(), Some(id));
    }
}

#[test]
fn invalid_ids_are_rejected_with_reason() {
    let long_path = format!("spiffe://td/{}", "a".repeat(2048));
    let long_td = format!("spiffe://{}/a", "a".repeat(256));
    let cases: &[(&str, &str)] = &[
        ("", "scheme"),
        ("https://example.org/a", "scheme"),
        ("SPIFFE://example.org/a", "scheme"),
        ("spiffe:/example.org/a", "scheme"),
        ("spiffe://example.org", "path is empty"),
        ("spiffe://example.org/", "empty segment"),
        ("spiffe:///a", "trust domain is empty"),
        ("spiffe://Example.org/a", "lowercase"),
        ("spiffe://example.org:8080/a", "port"),
        ("spiffe://user@example.org/a", "userinfo"),
        ("spiffe://exa mple.org/a", "[a-z0-9.-_]"),
        ("spiffe://example.org/a//b", "empty segment"),
        ("spiffe://example.org/a/", "empty segment"),
        ("spiffe://example.org/./a", "\".\" or \"..\""),
        ("spiffe://example.org/a/..", "\".\" or \"..\""),
        ("spiffe://example.org/a?x=1", "query"),
        ("spiffe://example.org/a#frag", "fragment"),
        ("spiffe://example.org?x/a", "query"),
        ("spiffe://example.org/a%20b", "percent"),
        ("spiffe://example.org/a b", "[A-Za-z0-9.-_]"),
        ("spiffe://example.org/é", "[A-Za-z0-9.-_]"),
        (&long_path, "2048"),
        (&long_td, "255"),
    ];
    for (input, reason) in cases {
        match SpiffeId::new(input) {
            Ok(id) => panic!("{input:?} parsed as {id}"),
            Err(e) => assert!(e.to_string().contains(reason), "{input:?}: {e}"),
        }
    }
}

#[test]
fn length_limit_is_inclusive() {
    let prefix = "spiffe://td/";
    let at_limit = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
    assert_eq!(at_limit.len(), MAX_ID_LEN);
    assert!(SpiffeId::new(&at_limit).is_ok());
    assert!(SpiffeId::new(&format!("{at_limit}a")).is_err());
}

#[test]
fn kubernetes_form() {
    let td = TrustDomain::new("cluster.local").unwrap();
    let id = SpiffeId::kubernetes(&td, "media", "encoder").unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/media/sa/encoder");
    assert!(id.is_member_of(&td));
    assert!(!id.is_member_of(&TrustDomain::new("other.local").unwrap()));
    assert!(SpiffeId::kubernetes(&td, "", "encoder").is_err());
    assert!(SpiffeId::kubernetes(&td, "media", "a/b/../c").is_err());
}

#[test]
fn trust_domain_forms() {
    let td = TrustDomain::new("spiffe://example.org").unwrap();
    assert_eq!(td.as_str(), "example.org");
    assert_eq!(td, TrustDomain::new("example.org").unwrap());
    assert_eq!(td.uri(), "spiffe://example.org");
    for bad in ["", "Example.org", "example.org:1", "spiffe://", "a/b"] {
        assert!(TrustDomain::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn serde_is_the_string_form() {
    let id = SpiffeId::new("spiffe://example.org/ns/a/sa/b").unwrap();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"spiffe://example.org/ns/a/sa/b\"");
    assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a//b\"").unwrap_err();
    assert!(err.to_string().contains("empty segment"), "{err}");
    let td: TrustDomain = serde_json::from_str("\"example.org\"").unwrap();
    assert_eq!(serde_json::to_string(&td).unwrap(), "\"example.org\"");
}

#[test]
fn ordering_and_hashing_follow_the_uri() {
    use std::collections::HashSet;
    let a = SpiffeId::new("spiffe://td/a").unwrap();
    let b = SpiffeId::new("spiffe://td/b").unwrap();
    assert!(a < b);
    let set: HashSet<_> = [a.clone(), a.clone(), b].into_iter().collect();
    assert_eq!(set.len(), 2);
}
