//! The table of live flows: what `meshd status` lists and the metrics read. A flow registers
//! when the agent accepts it and leaves when its [`FlowGuard`] drops; byte counters are
//! updated by the data path as bytes move, so long-lived streams are visible while they run.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Instant, SystemTime},
};

use serde::Serialize;

/// Which way a flow crosses this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From a local workload to a remote agent.
    Outbound,
    /// From a remote agent to a local workload.
    Inbound,
}

/// How a flow's bulk data is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPath {
    /// Kernel TLS, bytes spliced without entering the agent.
    Ktls,
    /// rustls in the agent.
    Userspace,
}

impl DataPath {
    pub fn label(self) -> &'static str {
        match self {
            DataPath::Ktls => "ktls",
            DataPath::Userspace => "userspace",
        }
    }
}

/// One live flow.
#[derive(Debug)]
pub struct Flow {
    pub id: u64,
    pub direction: Direction,
    /// The local workload's name.
    pub workload: String,
    /// The local workload's SPIFFE ID.
    pub local_identity: String,
    /// The original destination (outbound) or the local destination (inbound).
    pub destination: SocketAddr,
    /// The address the flow came from (the workload socket, or the remote agent).
    pub peer: SocketAddr,
    pub peer_identity: OnceLock<String>,
    pub data_path: OnceLock<DataPath>,
    /// Bytes from the workload side towards the remote side, and back.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Duplicates of the flow's sockets (workload side first) once data moves, so the agent can
    /// cut the flow from outside its task (a policy change).
    sockets: Mutex<Vec<OwnedFd>>,
    /// Why the agent cut the flow, if it did.
    pub revoked: OnceLock<String>,
    /// Sampling state for metrics and `meshd status`: rates, TCP health, exported bytes.
    pub stats: crate::metrics::FlowStats,
}

impl Flow {
    /// Registers the flow's sockets (workload side first) for [`Flow::cut`].
    pub fn set_sockets(&self, fds: &[BorrowedFd<'_>]) {
        let dups: Vec<OwnedFd> = fds.iter().filter_map(|fd| fd.try_clone_to_owned().ok()).collect();
        *self.sockets.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = dups;
    }

    /// Ends the flow now, as an abort: both of its TCP connections are reset (the workload sees
    /// a reset, never an end of stream — a cut stream must never look complete; the peer agent
    /// sees a reset and resets its side too). The data path's blocked calls fail and, finding
    /// [`Flow::revoked`] set, do not close gracefully.
    pub fn cut(&self, reason: String) {
        let _ = self.revoked.set(reason);
        let socks = self.sockets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The TLS side first, so no close_notify can slip out after the workload side ends.
        for fd in socks.iter().rev() {
            abort(fd);
        }
    }

    pub fn is_cut(&self) -> bool {
        self.revoked.get().is_some()
    }
}

/// Resets a TCP connection from outside the task using it: `connect(AF_UNSPEC)` makes the
/// kernel send a reset and wakes every call blocked on the socket with an error.
fn abort(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `sockaddr` with family AF_UNSPEC, passed with its own size; the
    // descriptor is a socket this flow owns a duplicate of.
    unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(fd.as_raw_fd(), &addr, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t);
    }
}

/// The live flows.
#[derive(Debug, Default)]
pub struct FlowTable {
    next: AtomicU64,
    flows: Mutex<BTreeMap<u64, Arc<Flow>>>,
}

/// Keeps a flow in the table; removes it when dropped.
#[derive(Debug)]
pub struct FlowGuard {
    pub flow: Arc<Flow>,
    table: Arc<FlowTable>,
}

impl FlowTable {
    /// Registers a new flow.
    pub fn open(
        self: &Arc<Self>,
        direction: Direction,
        workload: &str,
        local_identity: &str,
        destination: SocketAddr,
        peer: SocketAddr,
    ) -> FlowGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let flow = Arc::new(Flow {
            id,
            direction,
            workload: workload.into(),
            local_identity: local_identity.into(),
            destination,
            peer,
            peer_identity: OnceLock::new(),
            data_path: OnceLock::new(),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            started: Instant::now(),
            started_at: SystemTime::now(),
            sockets: Mutex::new(Vec::new()),
            revoked: OnceLock::new(),
            stats: Default::default(),
        });
        self.lock().insert(id, Arc::clone(&flow));
        FlowGuard { flow, table: Arc::clone(self) }
    }

    pub fn snapshot(&self) -> Vec<Arc<Flow>> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Flow>>> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        self.table.lock().remove(&self.flow.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_leave_the_table_when_their_guard_drops() {
        let table = Arc::new(FlowTable::default());
        let a = table.open(
            Direction::Outbound,
            "enc",
            "spiffe://t/a",
            "10.0.0.1:80".parse().unwrap(),
            "127.0.0.1:5".parse().unwrap(),
        );
        let b = table.open(
            Direction::Inbound,
            "dec",
            "spiffe://t/b",
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.9:5".parse().unwrap(),
        );
        assert_ne!(a.flow.id, b.flow.id);
        a.flow.bytes_out.fetch_add(10, Ordering::Relaxed);
        assert_eq!(table.snapshot().iter().map(|f| f.bytes_out.load(Ordering::Relaxed)).sum::<u64>(), 10);
        drop(a);
        assert_eq!(table.len(), 1);
        drop(b);
        assert!(table.is_empty());
    }
}
