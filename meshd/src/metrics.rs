//! Prometheus metrics, served as OpenMetrics text on the admin HTTP listener (`/metrics`).
//!
//! Every family is named `meshd_*` and registered by the part of the agent it describes:
//! - [`flow`]: flows opened/closed/active, bytes (live), setup and handshake failures,
//!   handshake duration, TCP RTT and retransmissions;
//! - [`policy`]: authorization denials;
//! - [`node`]: eBPF counters, SVID expiry and rotations, kernel TLS statistics, readiness;
//! - here: build info.
//!
//! Cardinality is bounded by construction: no label holds a port, an address or a flow id;
//! identity labels go through one [`labels::PairLimiter`] (at most `max_identity_pairs`
//! distinct source/destination pairs, the rest counted as `other`); every other label comes from
//! a closed set in the code (direction, data path, close reason, eBPF reason, kTLS statistic).
//! Live byte counters are brought up to date by the agent's sampler (every second) and before
//! every scrape, from the flow table's atomic counters, so hours-long streams show progress.

pub mod flow;
pub mod ktls;
pub mod labels;
pub mod live;
pub mod node;
pub mod policy;
pub mod tcp;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{encoding::text::encode, metrics::info::Info, registry::Registry};

pub use live::FlowStats;
pub use node::{NodeState, SvidState};
pub use policy::PolicySide;

use crate::flows::{Direction, Flow, FlowTable};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The OpenMetrics text content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    pairs: Arc<labels::PairLimiter>,
    flows: flow::FlowMetrics,
    policy: policy::PolicyMetrics,
    node: Arc<Mutex<NodeState>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("identity_pairs", &self.pairs.len()).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every family; `max_pairs` caps distinct identity pairs (see the module doc).
    pub fn new(table: Arc<FlowTable>, max_pairs: usize) -> Self {
        let mut registry = Registry::default();
        let pairs = Arc::new(labels::PairLimiter::new(max_pairs));
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("meshd_build", "meshd build information", build);
        let flows = flow::FlowMetrics::register(&mut registry, table, Arc::clone(&pairs));
        let policy = policy::PolicyMetrics::register(&mut registry, Arc::clone(&pairs));
        let node = node::NodeCollector::register(&mut registry, Arc::clone(&pairs));
        Self { registry, pairs, flows, policy, node }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Replaces what the node collector reports.
    pub fn set_node(&self, state: NodeState) {
        *self.node.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// A flow was established (handshake and authorization done, data path chosen).
    pub fn flow_opened(&self, flow: &Flow) {
        self.flows.opened(flow);
    }

    /// Brings `flow`'s byte counters (and TCP sample) into the counters.
    pub fn sample_flow(&self, flow: &Flow) {
        let bytes = totals(flow);
        let retrans = flow.stats.sample(flow.started, bytes.0, bytes.1);
        self.flows.sync(flow, bytes, retrans);
    }

    /// A registered flow ended (`reason` is a close-reason label).
    pub fn flow_closed(&self, flow: &Flow, reason: &'static str) {
        self.flows.sync(flow, totals(flow), 0);
        self.flows.closed(flow, reason);
    }

    /// A flow failed before it was registered (inbound handshake, request, authorization).
    pub fn setup_failed(&self, direction: Direction, reason: &'static str) {
        self.flows.setup_failed(direction, reason);
    }

    pub fn handshake(&self, direction: Direction, took: Duration) {
        self.flows.handshake(direction, took);
    }

    /// A handshake failed; `reason` is one of [`handshake_reason`]'s labels.
    pub fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        self.flows.handshake_failed(direction, reason);
    }

    /// Authorization refused a flow from `src` to `dst` (called by the policy code).
    pub fn policy_denied(&self, side: PolicySide, reason: &'static str, src: &str, dst: &str) {
        self.policy.denied(side, reason, src, dst);
    }

    pub fn policy_denied_n(&self, side: PolicySide, reason: &'static str, src: &str, dst: &str, n: u64) {
        self.policy.denied_n(side, reason, src, dst, n);
    }
}

fn totals(flow: &Flow) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (flow.bytes_out.load(Relaxed), flow.bytes_in.load(Relaxed))
}

/// A bounded label for a failed TLS handshake.
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription, Error as Tls};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Tls>()) {
        Some(Tls::InvalidCertificate(_) | Tls::NoCertificatesPresented) => "bad_certificate",
        Some(Tls::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRequired,
        )) => "peer_rejected_certificate",
        Some(Tls::AlertReceived(_)) => "alert",
        Some(Tls::PeerIncompatible(_) | Tls::NoApplicationProtocol) => "incompatible",
        Some(_) => "tls",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

#[cfg(test)]
mod tests;
