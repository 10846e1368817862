//! The agent's observability hooks: flow events for metrics, the access log and spans; the
//! per-second sampler; what `/metrics` and `/readyz` read.

use std::{io, sync::Arc, time::Duration};

use tracing::field;

use super::{access, Agent};
use crate::{
    admin::http::HttpHandler,
    flows::{Direction, FlowGuard},
    metrics::{ktls, NodeState, SvidState},
    proxy::CloseReason,
};

/// How often live flows are sampled (rates, TCP health, byte counters).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Agent {
    /// A flow is established (handshake, authorization and data path done).
    pub fn flow_opened(&self, guard: &FlowGuard) {
        self.metrics.flow_opened(&guard.flow);
        access::opened(&guard.flow);
    }

    /// Access log, metrics and the flow span's outcome at the end of a registered flow.
    pub fn flow_closed(&self, guard: &FlowGuard, reason: &CloseReason) {
        let f = &guard.flow;
        access::closed(f, reason);
        self.metrics.flow_closed(f, reason.label());
        let span = tracing::Span::current();
        span.record("bytes_out", f.bytes_out.load(std::sync::atomic::Ordering::Relaxed));
        span.record("bytes_in", f.bytes_in.load(std::sync::atomic::Ordering::Relaxed));
        span.record("reason", reason.label());
        if reason.is_failure() {
            span.record("otel.status_code", "ERROR");
        }
    }

    /// A flow that failed before it was registered (handshake, header, authorization).
    pub fn setup_failed(&self, direction: Direction, reason: &CloseReason) {
        self.metrics.setup_failed(direction, reason.label());
        let span = tracing::Span::current();
        span.record("reason", reason.label());
        span.record("otel.status_code", "ERROR");
    }

    /// An agent-to-agent TLS handshake completed in `took`.
    pub fn handshake_done(&self, direction: Direction, took: Duration, guard: Option<&FlowGuard>) {
        self.metrics.handshake(direction, took);
        if let Some(g) = guard {
            let _ = g.flow.stats.handshake.set(took);
        }
    }

    /// An agent-to-agent TLS handshake failed (`None`: it timed out).
    pub fn handshake_failed(&self, direction: Direction, error: Option<&io::Error>) {
        let reason = error.map_or("timeout", crate::metrics::handshake_reason);
        self.metrics.handshake_failed(direction, reason);
        tracing::Span::current().record("handshake_error", field::display(reason));
    }

    /// Samples every live flow: rates, TCP health, byte counters.
    pub fn sample_flows(&self) {
        for f in self.flows.snapshot() {
            self.metrics.sample_flow(&f);
        }
    }

    /// Reads what the node collector reports (eBPF maps, SVIDs, kernel TLS statistics) and
    /// samples the flows. Blocking: map reads and namespace workers.
    pub fn refresh_metrics(&self) {
        self.sample_flows();
        self.export_source_denials();
        let ebpf = self.lock_datapath().as_mut().map(|dp| {
            let c = dp.maps().counters();
            (c.errors, c.events)
        });
        let workloads = self.workloads();
        let svids = workloads
            .iter()
            .filter_map(|w| {
                let svid = self.identity.svid(&w.spiffe_id).ok()?;
                Some(SvidState {
                    workload: w.name.clone(),
                    identity: w.spiffe_id.to_string(),
                    not_after: svid.not_after.unix_timestamp(),
                })
            })
            .collect();
        let ktls = workloads
            .iter()
            .filter_map(|w| w.netns.run(ktls::read_here).ok().flatten().map(|s| (w.name.clone(), s)))
            .collect();
        let rotations = self.identity_changes.borrow().saturating_sub(self.identity_changes_base);
        let ready = self.readiness().is_ok();
        self.metrics.set_node(NodeState { ebpf, svids, rotations, ktls, workloads: workloads.len(), ready });
    }

    /// Ready when the programs are attached and every enrolled workload has an SVID.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err("starting or shutting down".into());
        }
        if self.lock_datapath().is_none() {
            return Err("eBPF programs are not attached".into());
        }
        for w in self.workloads() {
            if let Err(e) = self.identity.svid(&w.spiffe_id) {
                return Err(format!("no SVID for workload {}: {e}", w.name));
            }
        }
        Ok(())
    }
}

impl HttpHandler for Agent {
    async fn metrics(&self) -> Result<String, String> {
        let this = self.self_arc().ok_or("the agent is shutting down")?;
        let encoded = tokio::task::spawn_blocking(move || {
            this.refresh_metrics();
            this.metrics.encode()
        });
        encoded.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }

    fn readiness(&self) -> Result<(), String> {
        Agent::readiness(self)
    }
}

/// Samples the live flows every [`SAMPLE_EVERY`] until the agent is gone.
pub(super) async fn sampler(agent: std::sync::Weak<Agent>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(agent) = agent.upgrade() else { return };
        agent.sample_flows();
    }
}

/// Serves the admin HTTP listener, if configured.
pub(super) fn serve_http(
    agent: &Arc<Agent>,
    listener: Option<tokio::net::TcpListener>,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = listener?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin HTTP listening (/metrics, /healthz, /readyz)");
    }
    Some(tokio::spawn(crate::admin::http::serve(listener, Arc::clone(agent))))
}
