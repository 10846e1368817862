//! Authorization policy: who may talk to whom, in terms of SPIFFE identities, shaped like the
//! Istio AuthorizationPolicy and PeerAuthentication users already know (see [`model`] for the
//! file format).
//!
//! - [`Policy::parse`] validates a whole file or rejects it with the file, the place and why.
//! - [`Policy::decide`]: DENY policies first (deny wins), then ALLOW policies, then the defaults:
//!   a workload default, else a namespace default, else deny when an ALLOW policy selects the
//!   workload and none matched, else allow.
//! - [`compile`] turns it into the connect-time BPF entries for this node's workloads;
//!   the destination agent applies [`Policy::decide`] to every flow after the handshake.

pub mod compile;
pub mod model;
mod pattern;
mod validate;

use std::{collections::BTreeMap, net::IpAddr};

pub use model::{Action, Mode};
pub use pattern::Pattern;

use crate::identity::SpiffeId;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy {path}: {size} bytes is larger than the limit of {MAX_POLICY_BYTES} bytes")]
    TooLarge { path: String, size: usize },
    #[error("policy {path}: {message}")]
    Parse { path: String, message: String },
    #[error("policy {path}: {location}: {message}")]
    Invalid { path: String, location: String, message: String },
}

/// Which workloads a default or a peer-authentication entry covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    Workload(SpiffeId),
}

/// One validated rule: the source matches every non-empty list (each list: any entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub principals: Vec<Pattern>,
    pub namespaces: Vec<Pattern>,
    /// Inclusive port ranges; empty: every port.
    pub ports: Vec<(u16, u16)>,
}

#[derive(Debug, Clone)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    pub identities: Vec<SpiffeId>,
    pub labels: BTreeMap<String, String>,
    pub action: Action,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct PeerAuth {
    pub scope: Scope,
    pub mode: Mode,
}

/// A destination workload as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub labels: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// A validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub endpoints: Vec<(IpAddr, SpiffeId, BTreeMap<String, String>)>,
    pub defaults: Vec<(Scope, Action)>,
    pub peer_auth: Vec<PeerAuth>,
    /// Sources allowed to open plaintext connections to strict workloads: (address, prefix length).
    pub plaintext_allow: Vec<(IpAddr, u8)>,
    pub policies: Vec<AuthorizationPolicy>,
}

/// The Kubernetes namespace in a SPIFFE ID of the form `spiffe://<td>/ns/<namespace>/…`.
pub fn namespace_of(id: &SpiffeId) -> Option<&str> {
    let mut segments = id.path().trim_start_matches('/').split('/');
    (segments.next() == Some("ns")).then(|| segments.next()).flatten()
}

impl Rule {
    fn matches(&self, src: &SpiffeId, port: u16) -> bool {
        let ns = namespace_of(src).unwrap_or("");
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(src.as_str())))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|p| p.matches(ns)))
            && (self.ports.is_empty() || self.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)))
    }
}

impl AuthorizationPolicy {
    /// Whether this policy applies to destination `dst`.
    pub fn selects(&self, dst: Target<'_>) -> bool {
        namespace_of(dst.spiffe_id) == Some(self.namespace.as_str())
            && (self.identities.is_empty() || self.identities.contains(dst.spiffe_id))
            && self.labels.iter().all(|(k, v)| dst.labels.get(k) == Some(v))
    }
}

impl Scope {
    fn covers(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Namespace(ns) => namespace_of(id) == Some(ns.as_str()),
            Self::Workload(w) => w == id,
        }
    }

    fn is_workload(&self) -> bool {
        matches!(self, Self::Workload(_))
    }
}

impl Policy {
    /// The decision for `src` connecting to `dst` on `port`.
    pub fn decide(&self, src: &SpiffeId, dst: Target<'_>, port: u16) -> Decision {
        let applying: Vec<&AuthorizationPolicy> = self.policies.iter().filter(|p| p.selects(dst)).collect();
        let matched = |action: Action| {
            applying.iter().find(|p| p.action == action && p.rules.iter().any(|r| r.matches(src, port)))
        };
        if let Some(p) = matched(Action::Deny) {
            return Decision::Deny(format!("policy {:?} denies {src} → {} port {port}", p.name, dst.spiffe_id));
        }
        if matched(Action::Allow).is_some() {
            return Decision::Allow;
        }
        let default = |workload: bool| {
            self.defaults.iter().find(|(scope, _)| scope.is_workload() == workload && scope.covers(dst.spiffe_id))
        };
        match default(true).or_else(|| default(false)) {
            Some((_, Action::Allow)) => Decision::Allow,
            Some((scope, Action::Deny)) => Decision::Deny(format!(
                "no rule allows {src} → {} port {port}; the default for {} is deny",
                dst.spiffe_id,
                match scope {
                    Scope::Namespace(ns) => format!("namespace {ns}"),
                    Scope::Workload(w) => format!("workload {w}"),
                }
            )),
            None if applying.iter().any(|p| p.action == Action::Allow) => {
                Decision::Deny(format!("no ALLOW rule matches {src} → {} port {port}", dst.spiffe_id))
            }
            None => Decision::Allow,
        }
    }

    /// The peer-authentication mode of a workload (a workload entry wins over a namespace one).
    pub fn mode(&self, id: &SpiffeId) -> Option<Mode> {
        let find =
            |workload: bool| self.peer_auth.iter().find(|p| p.scope.is_workload() == workload && p.scope.covers(id));
        find(true).or_else(|| find(false)).map(|p| p.mode)
    }
}

#[cfg(test)]
mod tests;
