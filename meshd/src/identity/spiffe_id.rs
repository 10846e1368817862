//! SPIFFE IDs and trust domain names, validated per the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Error;

const SCHEME: &str = "spiffe://";
/// Maximum length of a SPIFFE ID URI, in bytes (spec section 2.3).
const MAX_ID_LEN: usize = 2048;
/// Maximum length of a trust domain name, in bytes (spec section 2.3).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE trust domain name such as `cluster.local`: lowercase letters, digits, `.`, `-`, `_`.
///
/// Parsed from either the bare name or its `spiffe://<name>` form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses and validates a trust domain name (`example.org` or `spiffe://example.org`).
    pub fn new(input: &str) -> Result<Self, Error> {
        let name = input.strip_prefix(SCHEME).unwrap_or(input);
        validate_trust_domain(name).map_err(|reason| Error::InvalidTrustDomain {
            input: input.to_owned(),
            reason,
        })?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE URI, `spiffe://<name>` (used as the CA certificate's URI SAN).
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0
    }
}

/// A workload SPIFFE ID, `spiffe://<trust-domain>/<path>`, with a non-empty path.
///
/// Trust-domain-only IDs (`spiffe://example.org`) are not workload identities and are rejected;
/// use [`TrustDomain`] for those.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    /// The whole URI, as given (it is already canonical once validated).
    uri: String,
    /// Byte offset of the path's leading `/` in `uri`.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `spiffe://<trust-domain>/<path>`.
    pub fn new(input: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidSpiffeId {
            input: input.to_owned(),
            reason,
        };
        if input.len() > MAX_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("scheme must be \"spiffe://\" (lowercase)"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td).map_err(invalid)?;
        validate_path(path).map_err(invalid)?;
        Ok(Self {
            uri: input.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// Builds the Kubernetes form `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn kubernetes(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, Error> {
        Self::new(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path including its leading `/`, e.g. `/ns/media/sa/encoder`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// Whether this ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain() == trust_domain.as_str()
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.uri
    }
}

fn validate_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("trust domain is empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("trust domain is longer than 255 bytes");
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err("trust domain must not contain a port"),
            '@' => return Err("trust domain must not contain userinfo"),
            '?' => return Err("SPIFFE ID must not contain a query"),
            '#' => return Err("SPIFFE ID must not contain a fragment"),
            'A'..='Z' => return Err("trust domain must be lowercase"),
            _ => return Err("trust domain may contain only [a-z0-9.-_]"),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("path is empty (a workload SPIFFE ID needs one)");
    }
    // `path` starts with '/', so the first split element is the empty prefix.
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err("path has an empty segment (\"//\" or a trailing \"/\")"),
            "." | ".." => return Err("path has a \".\" or \"..\" segment"),
            _ => {}
        }
        for c in segment.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '?' => return Err("SPIFFE ID must not contain a query"),
                '#' => return Err("SPIFFE ID must not contain a fragment"),
                '%' => return Err("path must not be percent-encoded"),
                _ => return Err("path segments may contain only [A-Za-z0-9.-_]"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_into_parts() {
        let cases = [
            ("spiffe://example.org/a", "example.org", "/a"),
            (
                "spiffe://cluster.local/ns/media/sa/encoder",
                "cluster.local",
                "/ns/media/sa/encoder",
            ),
            (
                "spiffe://a-b_c.9/X.y-Z_0/..a/a..",
                "a-b_c.9",
                "/X.y-Z_0/..a/a..",
            ),
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
}
