//! Label sets, and the cap that keeps identity labels bounded.
//!
//! Identities are the only labels whose values come from outside the agent's code. Their number
//! is naturally bounded (enrolled workloads × the peers they talk to), and [`PairLimiter`] makes
//! it a hard bound: the first `max` distinct (source, destination) pairs get their own series;
//! every later pair is counted under `src="other", dst="other"`. Ports and addresses are never
//! labels: 1,000 flows from 1,000 source ports between the same two workloads are one series.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::MetricType,
};

/// The label value for pairs over the cap, and for a peer identity not (yet) known.
pub const OTHER: &str = "other";
pub const UNKNOWN: &str = "unknown";

/// Default number of distinct (source, destination) identity pairs with their own series.
pub const DEFAULT_MAX_PAIRS: usize = 1000;

/// A flow's identities as labels: `src` is the client side's identity, `dst` the server side's,
/// the same at both agents whichever direction the flow crosses them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub direction: &'static str,
    pub src: String,
    pub dst: String,
}

/// [`FlowLabels`] and the flow's data path (`ktls`, `userspace`, or `none` before it is chosen).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub direction: &'static str,
    pub src: String,
    pub dst: String,
    pub data_path: &'static str,
}

/// [`PathLabels`] and why the flow ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub direction: &'static str,
    pub src: String,
    pub dst: String,
    pub data_path: &'static str,
    pub reason: &'static str,
}

/// A direction and a bounded reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// A family whose descriptor (`# HELP`, `# TYPE`) is exposed even before its first series, so
/// every family can be discovered (and checked) from the first scrape on.
#[derive(Debug, Clone)]
pub struct Described<M>(pub M);

impl<M: EncodeMetric> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Caps the distinct (source, destination) identity pairs used as labels.
#[derive(Debug)]
pub struct PairLimiter {
    max: usize,
    seen: Mutex<HashSet<(String, String)>>,
    overflowed: AtomicU64,
}

impl PairLimiter {
    pub fn new(max: usize) -> Self {
        Self { max, seen: Mutex::new(HashSet::new()), overflowed: AtomicU64::new(0) }
    }

    /// The labels to use for this pair: the identities themselves while the pair is known or
    /// there is room, `other`/`other` once the cap is reached.
    pub fn pair(&self, src: &str, dst: &str) -> (String, String) {
        let src = if src.is_empty() { UNKNOWN } else { src };
        let dst = if dst.is_empty() { UNKNOWN } else { dst };
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (src.to_string(), dst.to_string());
        if seen.contains(&key) {
            return key;
        }
        if seen.len() < self.max {
            seen.insert(key.clone());
            return key;
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        (OTHER.into(), OTHER.into())
    }

    /// How many times a pair was folded into `other` (exported as a counter).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_beyond_the_cap_fold_into_other() {
        let l = PairLimiter::new(2);
        assert_eq!(l.pair("a", "b"), ("a".into(), "b".into()));
        assert_eq!(l.pair("a", ""), ("a".into(), UNKNOWN.into()));
        assert_eq!(l.pair("c", "d"), (OTHER.into(), OTHER.into()));
        // Known pairs keep their labels after the cap is reached.
        assert_eq!(l.pair("a", "b"), ("a".into(), "b".into()));
        assert_eq!((l.len(), l.overflowed()), (2, 1));
    }
}
