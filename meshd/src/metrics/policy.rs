//! Authorization denials. The family exists (with no series) from start-up; the policy code
//! calls [`PolicyMetrics::denied`] for every flow it refuses.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::labels::PairLimiter;

/// Where a flow was refused: by the source agent before connecting, or by the destination agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicySide {
    Source,
    Destination,
}

impl PolicySide {
    pub fn label(self) -> &'static str {
        match self {
            PolicySide::Source => "source",
            PolicySide::Destination => "destination",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    side: &'static str,
    /// A bounded reason, e.g. `no_matching_rule`, `foreign_trust_domain`, `port_not_allowed`.
    reason: &'static str,
    src: String,
    dst: String,
}

pub struct PolicyMetrics {
    pairs: Arc<PairLimiter>,
    denials: Family<DenialLabels, Counter>,
}

impl PolicyMetrics {
    pub fn register(registry: &mut Registry, pairs: Arc<PairLimiter>) -> Self {
        let denials = Family::default();
        registry.register(
            "meshd_policy_denials",
            "Flows refused by authorization policy, by side, reason and identities",
            super::labels::Described(denials.clone()),
        );
        Self { pairs, denials }
    }

    /// Counts one denied flow from `src` to `dst` (SPIFFE IDs; identity labels are capped).
    pub fn denied(&self, side: PolicySide, reason: &'static str, src: &str, dst: &str) {
        self.denied_n(side, reason, src, dst, 1);
    }

    /// Counts `n` denials at once (the kernel's connect-time counters are read as deltas).
    pub fn denied_n(&self, side: PolicySide, reason: &'static str, src: &str, dst: &str, n: u64) {
        let (src, dst) = self.pairs.pair(src, dst);
        self.denials.get_or_create(&DenialLabels { side: side.label(), reason, src, dst }).inc_by(n);
    }
}
