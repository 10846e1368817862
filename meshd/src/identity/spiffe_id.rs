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
        validate_trust_domain(name).map_err(|reason| Error::InvalidTrustDomain { input: input.to_owned(), reason })?;
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
        let invalid = |reason| Error::InvalidSpiffeId { input: input.to_owned(), reason };
        if input.len() > MAX_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = input.strip_prefix(SCHEME).ok_or_else(|| invalid("scheme must be \"spiffe://\" (lowercase)"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td).map_err(invalid)?;
        validate_path(path).map_err(invalid)?;
        Ok(Self { uri: input.to_owned(), path_start: SCHEME.len() + td.len() })
    }

    /// Builds the Kubernetes form `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn kubernetes(trust_domain: &TrustDomain, namespace: &str, service_account: &str) -> Result<Self, Error> {
        Self::new(&format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"))
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
mod tests;
