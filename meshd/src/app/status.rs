//! The agent's status as stable JSON (`meshd status --json`): programs, workloads, flows,
//! eBPF counters. Field names are part of the CLI's interface: add, don't rename.

use std::{sync::atomic::Ordering, time::UNIX_EPOCH};

use serde_json::{json, Value};

use super::Agent;

impl Agent {
    pub fn status(&self) -> Value {
        let (pins, counters, flow_entries) = match self.lock_datapath().as_mut() {
            Some(dp) => {
                let pins = dp.pin_dir().display().to_string();
                let entries = dp.maps().flow_entries();
                (Value::String(pins), serde_json::to_value(dp.maps().counters()).unwrap_or_default(), json!(entries))
            }
            None => (Value::Null, Value::Null, Value::Null),
        };
        let workloads: Vec<Value> = self
            .workloads()
            .iter()
            .map(|w| {
                let svid = self.identity.svid(&w.spiffe_id).ok();
                let expiry = svid.as_ref().map(|s| s.not_after.to_string());
                let now = time::OffsetDateTime::now_utc();
                json!({
                    "name": w.name,
                    "spiffe_id": w.spiffe_id.as_str(),
                    "cgroup": w.cgroup.display().to_string(),
                    "cgroup_id": w.cgroup_id,
                    "netns": w.netns.path().display().to_string(),
                    "ipv6": w.ipv6,
                    "labels": w.labels,
                    "svid_not_after": expiry,
                    "svid_not_after_unix": svid.as_ref().map(|s| s.not_after.unix_timestamp()),
                    "svid_expires_in_seconds": svid.as_ref().map(|s| (s.not_after - now).whole_seconds()),
                    "svid_serial": svid.as_ref().map(|s| s.serial.clone()),
                })
            })
            .collect();
        let flows: Vec<Value> = self
            .flows
            .snapshot()
            .iter()
            .map(|f| {
                let secs = f.started.elapsed().as_secs_f64().max(1e-3);
                let (out, inb) = (f.bytes_out.load(Ordering::Relaxed), f.bytes_in.load(Ordering::Relaxed));
                let (now_out, now_in) = f.stats.rates();
                let tcp: serde_json::Map<String, Value> = f
                    .stats
                    .tcp()
                    .into_iter()
                    .map(|(side, h)| (side.label().to_string(), serde_json::to_value(h).unwrap_or_default()))
                    .collect();
                json!({
                    "id": f.id,
                    "direction": f.direction,
                    "workload": f.workload,
                    "local_identity": f.local_identity,
                    "peer_identity": f.peer_identity.get(),
                    "destination": f.destination.to_string(),
                    "peer": f.peer.to_string(),
                    "data_path": f.data_path.get().map(|p| p.label()),
                    "bytes_out": out,
                    "bytes_in": inb,
                    "duration_seconds": secs,
                    "rate_out_bps": (out as f64 * 8.0 / secs) as u64,
                    "rate_in_bps": (inb as f64 * 8.0 / secs) as u64,
                    "started_unix": f.started_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "current_out_bps": now_out,
                    "current_in_bps": now_in,
                    "handshake_ms": f.stats.handshake.get().map(|d| d.as_secs_f64() * 1e3),
                    "established": f.data_path.get().is_some(),
                    "tcp": tcp,
                })
            })
            .collect();
        json!({
            "node": self.config.node,
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.is_ready(),
            "trust_domain": self.trust_domain.as_str(),
            "data_path": {
                "mode": self.config.data_path,
                "ktls_available": self.ktls.available,
                "ktls_rekey": self.ktls.rekey,
                "ktls_detail": self.ktls.detail,
                "new_flows": if self.use_ktls() { "ktls" } else { "userspace" },
            },
            "pins": pins,
            "programs": meshd_common::program_names::ALL,
            "workloads": workloads,
            "unrestored_workloads": self.unrestored().iter().map(|w| json!({
                "name": w.name, "cgroup": w.cgroup.display().to_string(),
            })).collect::<Vec<_>>(),
            "policy": {
                "loaded": self.policy_loaded(),
                "source": self.policy_source(),
                "policies": self.current_policy().policies.len(),
            },
            "flows": flows,
            "ebpf": { "counters": counters, "flow_entries": flow_entries },
            "observability": {
                "admin_http": self.config.admin.http.map(|a| a.to_string()),
                "otlp_endpoint": self.config.otlp.as_ref().map(|o| o.endpoint.clone()),
                "sample_interval_seconds": super::observe::SAMPLE_EVERY.as_secs_f64(),
            },
        })
    }
}
