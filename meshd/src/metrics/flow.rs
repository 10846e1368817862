//! Flow families: opened, closed (by reason), active, bytes, setup and handshake failures,
//! handshake duration, TCP health. Counters are updated by the flow hooks and the sampler;
//! gauges over live flows are computed from the flow table at scrape time, so a closed flow's
//! series disappear with it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram, MetricType},
    registry::{Registry, Unit},
};

use super::labels::{CloseLabels, Described, DirectionLabels, FlowLabels, PairLimiter, PathLabels, ReasonLabels};
use crate::flows::{Direction, Flow, FlowTable};

/// Handshake buckets: 1 ms … 10 s (the setup deadline).
const HANDSHAKE_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

/// (client identity, server identity) of a flow, as seen at either agent.
pub fn identities(flow: &Flow) -> (&str, &str) {
    let peer = flow.peer_identity.get().map_or("", String::as_str);
    match flow.direction {
        Direction::Outbound => (flow.local_identity.as_str(), peer),
        Direction::Inbound => (peer, flow.local_identity.as_str()),
    }
}

pub fn data_path(flow: &Flow) -> &'static str {
    flow.data_path.get().map_or("none", |p| p.label())
}

pub struct FlowMetrics {
    pairs: Arc<PairLimiter>,
    opened: Family<PathLabels, Counter>,
    closed: Family<CloseLabels, Counter>,
    sent: Family<PathLabels, Counter>,
    received: Family<PathLabels, Counter>,
    setup_failures: Family<ReasonLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    handshake: Family<DirectionLabels, Histogram>,
    retransmits: Family<FlowLabels, Counter>,
}

impl FlowMetrics {
    pub fn register(registry: &mut Registry, table: Arc<FlowTable>, pairs: Arc<PairLimiter>) -> Self {
        let m = Self {
            pairs: Arc::clone(&pairs),
            opened: Family::default(),
            closed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            setup_failures: Family::default(),
            handshake_failures: Family::default(),
            handshake: Family::new_with_constructor(|| Histogram::new(HANDSHAKE_BUCKETS)),
            retransmits: Family::default(),
        };
        registry.register(
            "meshd_flows_opened",
            "Flows established (handshake and authorization done), by identities and data path",
            Described(m.opened.clone()),
        );
        registry.register(
            "meshd_flows_closed",
            "Established flows that ended, by identities, data path and close reason",
            Described(m.closed.clone()),
        );
        registry.register_with_unit(
            "meshd_flow_sent",
            "Bytes from the local workload towards the peer, counted live as they move",
            Unit::Bytes,
            Described(m.sent.clone()),
        );
        registry.register_with_unit(
            "meshd_flow_received",
            "Bytes from the peer to the local workload, counted live as they move",
            Unit::Bytes,
            Described(m.received.clone()),
        );
        registry.register(
            "meshd_flow_setup_failures",
            "Flows that ended before they were established, by close reason",
            Described(m.setup_failures.clone()),
        );
        registry.register(
            "meshd_handshake_failures",
            "Agent-to-agent TLS handshakes that failed, by reason",
            Described(m.handshake_failures.clone()),
        );
        registry.register_with_unit(
            "meshd_handshake_duration",
            "TCP connect (outbound) and TLS 1.3 handshake time between agents",
            Unit::Seconds,
            Described(m.handshake.clone()),
        );
        registry.register(
            "meshd_tcp_retransmits",
            "TCP segments retransmitted on agent-to-agent connections (sampled from TCP_INFO)",
            Described(m.retransmits.clone()),
        );
        registry.register_collector(Box::new(LiveCollector { table, pairs }));
        m
    }

    fn labels(&self, flow: &Flow) -> PathLabels {
        let (src, dst) = identities(flow);
        let (src, dst) = self.pairs.pair(src, dst);
        PathLabels { direction: direction(flow.direction), src, dst, data_path: data_path(flow) }
    }

    pub fn opened(&self, flow: &Flow) {
        self.opened.get_or_create(&self.labels(flow)).inc();
    }

    /// Adds the bytes `flow` moved since the last call, and its new retransmissions.
    pub fn sync(&self, flow: &Flow, bytes: (u64, u64), retransmits: u64) {
        let (out, inb) = flow.stats.unexported(bytes.0, bytes.1);
        if out == 0 && inb == 0 && retransmits == 0 {
            return;
        }
        let l = self.labels(flow);
        if out > 0 {
            self.sent.get_or_create(&l).inc_by(out);
        }
        if inb > 0 {
            self.received.get_or_create(&l).inc_by(inb);
        }
        if retransmits > 0 {
            let fl = FlowLabels { direction: l.direction, src: l.src, dst: l.dst };
            self.retransmits.get_or_create(&fl).inc_by(retransmits);
        }
    }

    /// A registered flow ended: closed if it was established, a setup failure otherwise.
    pub fn closed(&self, flow: &Flow, reason: &'static str) {
        if flow.data_path.get().is_none() {
            self.setup_failed(flow.direction, reason);
            return;
        }
        let PathLabels { direction, src, dst, data_path } = self.labels(flow);
        self.closed.get_or_create(&CloseLabels { direction, src, dst, data_path, reason }).inc();
    }

    pub fn setup_failed(&self, d: Direction, reason: &'static str) {
        self.setup_failures.get_or_create(&ReasonLabels { direction: direction(d), reason }).inc();
    }

    pub fn handshake(&self, d: Direction, took: Duration) {
        self.handshake.get_or_create(&DirectionLabels { direction: direction(d) }).observe(took.as_secs_f64());
    }

    pub fn handshake_failed(&self, d: Direction, reason: &'static str) {
        self.handshake_failures.get_or_create(&ReasonLabels { direction: direction(d), reason }).inc();
    }
}

/// Gauges over the live, established flows, computed from the table at scrape time.
#[derive(Debug)]
struct LiveCollector {
    table: Arc<FlowTable>,
    pairs: Arc<PairLimiter>,
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut active: HashMap<PathLabels, i64> = HashMap::new();
        let mut rtt: HashMap<FlowLabels, f64> = HashMap::new();
        for flow in self.table.snapshot().iter().filter(|f| f.data_path.get().is_some()) {
            let (src, dst) = identities(flow);
            let (src, dst) = self.pairs.pair(src, dst);
            let dir = direction(flow.direction);
            let pl = PathLabels { direction: dir, src: src.clone(), dst: dst.clone(), data_path: data_path(flow) };
            *active.entry(pl).or_default() += 1;
            if let Some(h) = flow.stats.tcp_of(super::tcp::SocketSide::Mesh) {
                let secs = f64::from(h.rtt_us) / 1e6;
                let e = rtt.entry(FlowLabels { direction: dir, src, dst }).or_default();
                *e = e.max(secs);
            }
        }
        let mut m = encoder.encode_descriptor(
            "meshd_flows_active",
            "Established flows now open, by identities and data path",
            None,
            MetricType::Gauge,
        )?;
        for (labels, n) in &active {
            ConstGauge::new(*n).encode(m.encode_family(labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "meshd_tcp_rtt",
            "Largest smoothed RTT among live agent-to-agent connections (TCP_INFO, sampled every second)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (labels, secs) in &rtt {
            ConstGauge::new(*secs).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}
