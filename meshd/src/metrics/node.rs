//! Node families read from the kernel and the identity source just before each scrape: eBPF
//! counters, certificate expiry and rotations, kernel TLS statistics, enrolled workloads.
//! The agent fills a [`NodeState`]; the collector encodes exactly what it holds, so series of
//! an unenrolled workload disappear with it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::{Registry, Unit},
};

use super::{ktls::Kind, labels::PairLimiter};

/// Counter values by label, e.g. the eBPF counters by reason.
pub type Counts = Vec<(&'static str, u64)>;

/// One enrolled workload's current SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidState {
    pub workload: String,
    pub identity: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// What the agent read for the next scrape.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// Sums of the per-CPU `ERRORS` and `EVENTS` maps; `None` once the programs are detached.
    pub ebpf: Option<(Counts, Counts)>,
    pub svids: Vec<SvidState>,
    /// SVID or trust bundle changes since start-up.
    pub rotations: u64,
    /// `tls_stat` per workload namespace (absent without kernel TLS).
    pub ktls: Vec<(String, Vec<(String, u64)>)>,
    pub workloads: usize,
    pub ready: bool,
}

#[derive(Debug)]
pub struct NodeCollector {
    state: Arc<Mutex<NodeState>>,
    pairs: Arc<PairLimiter>,
}

impl NodeCollector {
    pub fn register(registry: &mut Registry, pairs: Arc<PairLimiter>) -> Arc<Mutex<NodeState>> {
        let state = Arc::new(Mutex::new(NodeState::default()));
        registry.register_collector(Box::new(Self { state: Arc::clone(&state), pairs }));
        state
    }
}

type Out<'a> = DescriptorEncoder<'a>;

fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
    e: &mut Out<'_>,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges<L: prometheus_client::encoding::EncodeLabelSet>(
    e: &mut Out<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(L, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

type Labels = Vec<(&'static str, String)>;

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let one = |k: &'static str, v: &str| -> Labels { vec![(k, v.to_string())] };
        let (errors, events) = s.ebpf.clone().unwrap_or_default();
        let rows: Vec<(Labels, u64)> = errors.iter().map(|(r, v)| (one("reason", r), *v)).collect();
        counters(&mut e, "meshd_ebpf_errors", "eBPF program error paths taken, by reason (per-CPU map sums)", &rows)?;
        let rows: Vec<(Labels, u64)> = events.iter().map(|(r, v)| (one("event", r), *v)).collect();
        counters(&mut e, "meshd_ebpf_events", "What the eBPF programs did, by event (per-CPU map sums)", &rows)?;
        let rows: Vec<(Labels, i64)> = s
            .svids
            .iter()
            .map(|c| (vec![("workload", c.workload.clone()), ("identity", c.identity.clone())], c.not_after))
            .collect();
        gauges(
            &mut e,
            "meshd_svid_expiry_timestamp",
            "When each enrolled workload's current SVID expires (Unix time)",
            Some(&Unit::Seconds),
            &rows,
        )?;
        counters::<Labels>(
            &mut e,
            "meshd_svid_rotations",
            "SVID or trust bundle changes seen since start-up",
            &[(vec![], s.rotations)],
        )?;
        let (mut err, mut sessions, mut active, mut rekeys) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (workload, stats) in &s.ktls {
            for (name, v) in stats {
                let w = ("workload", workload.clone());
                match super::ktls::kind(name) {
                    Some(Kind::Error(k)) => err.insert(vec![w, ("error", k.into())], *v),
                    Some(Kind::Sessions(d, m)) => {
                        sessions.insert(vec![w, ("direction", d.into()), ("mode", m.into())], *v)
                    }
                    Some(Kind::Active(d, m)) => active.insert(vec![w, ("direction", d.into()), ("mode", m.into())], *v),
                    Some(Kind::Rekeys(d)) => rekeys.insert(vec![w, ("direction", d.into())], *v),
                    None => None,
                };
            }
        }
        let rows = |m: BTreeMap<Labels, u64>| m.into_iter().collect::<Vec<_>>();
        counters(
            &mut e,
            "meshd_ktls_errors",
            "Kernel TLS errors (/proc/net/tls_stat of each workload namespace)",
            &rows(err),
        )?;
        counters(
            &mut e,
            "meshd_ktls_sessions",
            "Kernel TLS contexts installed (tls_stat), by direction and mode",
            &rows(sessions),
        )?;
        let active: Vec<(Labels, i64)> = active.into_iter().map(|(l, v)| (l, v as i64)).collect();
        gauges(&mut e, "meshd_ktls_sessions_active", "Kernel TLS contexts now installed (tls_stat)", None, &active)?;
        counters(&mut e, "meshd_ktls_rekeys", "Kernel TLS 1.3 key updates applied (tls_stat)", &rows(rekeys))?;
        gauges::<Labels>(
            &mut e,
            "meshd_workloads_enrolled",
            "Workloads enrolled on this node",
            None,
            &[(vec![], s.workloads as i64)],
        )?;
        gauges::<Labels>(
            &mut e,
            "meshd_ready",
            "1 when programs are attached and identities loaded",
            None,
            &[(vec![], i64::from(s.ready))],
        )?;
        counters::<Labels>(
            &mut e,
            "meshd_metrics_identity_overflow",
            "Flow events counted under src=\"other\",dst=\"other\" because the identity pair cap was reached",
            &[(vec![], self.pairs.overflowed())],
        )?;
        Ok(())
    }
}
