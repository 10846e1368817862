//! The policy file as written (YAML), parsed strictly: unknown fields are errors.
//!
//! ```yaml
//! endpoints:            # who lives where (a Kubernetes controller fills this from pods, like
//!                       # Cilium's ipcache); lets the source node deny at connect()
//!   - { address: 10.100.1.2, spiffe_id: "spiffe://cluster.local/ns/media/sa/packager", labels: { app: packager } }
//! defaults:             # when no rule decides (else: allow, unless an ALLOW policy selects the workload)
//!   - { namespace: media, action: deny }
//! peer_authentication:  # strict: plaintext from outside the mesh is dropped; permissive: let in, counted
//!   - { namespace: media, mode: strict, allow_plaintext_from: [ 10.100.1.1/32 ] }
//! policies:
//!   - name: packager-ingest
//!     namespace: media                      # destination workloads in this namespace…
//!     selector: { labels: { app: packager } } # …narrowed by identity and/or labels (optional)
//!     action: allow                         # or deny (deny wins over allow)
//!     rules:                                # any rule matching is enough
//!       - from: { principals: [ "spiffe://cluster.local/ns/media/sa/encoder" ], namespaces: [ "ingest-*" ] }
//!         to: { ports: [ 9000, "8000-8100" ] }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub defaults: Vec<Default>,
    #[serde(default)]
    pub peer_authentication: Vec<PeerAuthentication>,
    #[serde(default)]
    pub policies: Vec<PolicyDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    pub spiffe_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Default {
    /// Applies to workloads of this namespace…
    #[serde(default)]
    pub namespace: Option<String>,
    /// …or to this one workload (its SPIFFE ID); a workload default wins over a namespace one.
    #[serde(default)]
    pub workload: Option<String>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[serde(alias = "ALLOW")]
    Allow,
    #[serde(alias = "DENY")]
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAuthentication {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub workload: Option<String>,
    pub mode: Mode,
    /// Sources allowed to connect in plaintext anyway (health checks from the node), as CIDRs.
    /// Node-wide: the union of every entry's list applies to every strict workload of the node.
    #[serde(default)]
    pub allow_plaintext_from: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Strict,
    Permissive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub selector: Option<Selector>,
    pub action: Action,
    pub rules: Vec<RuleDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    #[serde(default)]
    pub from: Option<From>,
    #[serde(default)]
    pub to: Option<To>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// SPIFFE IDs; `*` matches any, `prefix*` and `*suffix` match by prefix or suffix.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Source namespaces (from `spiffe://<td>/ns/<namespace>/…`), with the same wildcards.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// Ports and inclusive ranges: `9000`, `"8000-8100"`.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Port(u32),
    Text(String),
}
