//! The access log: one line when a flow is established and one when it ends, at target
//! `meshd::access`. With `--log-format json` every value below is a JSON field of the line.

use std::sync::atomic::Ordering;

use tracing::info;

use crate::{
    flows::Flow,
    metrics::flow::{data_path, direction, identities},
    proxy::CloseReason,
};

/// The flow is established: identities verified, destination authorized, data path chosen.
pub fn opened(f: &Flow) {
    let (src_id, dst_id) = identities(f);
    info!(
        target: "meshd::access",
        event = "open",
        flow_id = f.id,
        direction = direction(f.direction),
        workload = %f.workload,
        src_id,
        dst_id,
        local_identity = %f.local_identity,
        peer_identity = f.peer_identity.get().map_or("", String::as_str),
        destination = %f.destination,
        peer = %f.peer,
        data_path = data_path(f),
        handshake_ms = f.stats.handshake.get().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        "flow opened"
    );
}

/// The flow ended (`established` false: it failed before it was).
pub fn closed(f: &Flow, reason: &CloseReason) {
    let (src_id, dst_id) = identities(f);
    info!(
        target: "meshd::access",
        event = "close",
        flow_id = f.id,
        direction = direction(f.direction),
        workload = %f.workload,
        src_id,
        dst_id,
        local_identity = %f.local_identity,
        peer_identity = f.peer_identity.get().map_or("", String::as_str),
        destination = %f.destination,
        peer = %f.peer,
        data_path = data_path(f),
        established = f.data_path.get().is_some(),
        bytes_out = f.bytes_out.load(Ordering::Relaxed),
        bytes_in = f.bytes_in.load(Ordering::Relaxed),
        duration_ms = f.started.elapsed().as_millis() as u64,
        close_reason = if f.revoked.get().is_some() { "revoked" } else { reason.label() },
        reason = %f.revoked.get().map_or_else(|| reason.to_string(), |r| format!("revoked: {r}")),
        "flow closed"
    );
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::flows::{DataPath, Direction, FlowTable};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt().json().flatten_event(true).with_writer(move || w.clone()).finish();
        let table = Arc::new(FlowTable::default());
        let g = table.open(
            Direction::Inbound,
            "dec",
            "spiffe://t/ns/m/sa/dec",
            "10.100.1.2:9000".parse().unwrap(),
            "10.100.0.2:40000".parse().unwrap(),
        );
        let _ = g.flow.peer_identity.set("spiffe://t/ns/m/sa/enc".into());
        let _ = g.flow.data_path.set(DataPath::Userspace);
        g.flow.bytes_in.fetch_add(1234, Ordering::Relaxed);
        tracing::subscriber::with_default(sub, || {
            opened(&g.flow);
            closed(&g.flow, &CloseReason::Reset);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (open, close) = (&lines[0], &lines[1]);
        assert_eq!(open["event"], "open");
        assert_eq!(open["target"], "meshd::access");
        assert_eq!(open["src_id"], "spiffe://t/ns/m/sa/enc", "inbound: the source is the peer");
        assert_eq!(open["dst_id"], "spiffe://t/ns/m/sa/dec");
        assert_eq!(close["destination"], "10.100.1.2:9000");
        assert_eq!(close["bytes_in"], 1234);
        assert_eq!(close["data_path"], "userspace");
        assert_eq!(close["close_reason"], "reset");
        for field in ["flow_id", "direction", "peer", "duration_ms", "bytes_out", "established"] {
            assert!(close.get(field).is_some(), "{field} in {close}");
        }
    }
}
