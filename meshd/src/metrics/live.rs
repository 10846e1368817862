//! What the agent samples from a live flow: bytes not yet added to the counters, current rates,
//! and the TCP health of its sockets.
//!
//! The data path keeps only the flow's two byte counters up to date; everything here is derived
//! by the sampler (every second) and at scrape time, so the data path pays nothing for it.
//! The flow's sockets are reachable through duplicated descriptors that the data phase
//! attaches when it starts and detaches the moment it ends, so a socket's final close (and a
//! reset-on-close) is not held back by the sampler.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use super::tcp::{self, SocketSide, TcpHealth};

/// Per-flow sampling state (a field of [`crate::flows::Flow`]).
#[derive(Debug, Default)]
pub struct FlowStats {
    exported_out: AtomicU64,
    exported_in: AtomicU64,
    exported_retrans: AtomicU64,
    rate_out_bps: AtomicU64,
    rate_in_bps: AtomicU64,
    last: Mutex<Option<(Instant, u64, u64)>>,
    sockets: Mutex<Vec<(SocketSide, Arc<OwnedFd>)>>,
    tcp: Mutex<Vec<(SocketSide, TcpHealth)>>,
    /// TCP connect + TLS handshake time, once known.
    pub handshake: OnceLock<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FlowStats {
    /// Makes `fd` (one of the flow's TCP sockets) reachable for `TCP_INFO` sampling.
    pub fn attach(&self, side: SocketSide, fd: BorrowedFd<'_>) {
        if let Ok(dup) = fd.try_clone_to_owned() {
            lock(&self.sockets).push((side, Arc::new(dup)));
        }
    }

    /// Forgets the sockets: call before the data phase closes them.
    pub fn detach(&self) {
        lock(&self.sockets).clear();
    }

    /// Bytes moved since the last call, given the flow's current totals (safe to call from
    /// several threads: every byte is returned exactly once).
    pub fn unexported(&self, out: u64, inb: u64) -> (u64, u64) {
        let delta = |exported: &AtomicU64, now: u64| now.saturating_sub(exported.fetch_max(now, Ordering::Relaxed));
        (delta(&self.exported_out, out), delta(&self.exported_in, inb))
    }

    /// Updates the current rates from the totals and samples the sockets' TCP health.
    /// Returns the mesh socket's retransmissions since the last sample.
    pub fn sample(&self, started: Instant, out: u64, inb: u64) -> u64 {
        let now = Instant::now();
        {
            let mut last = lock(&self.last);
            let (t0, o0, i0) = last.unwrap_or((started, 0, 0));
            let secs = now.duration_since(t0).as_secs_f64();
            if secs > 0.05 {
                let bps = |a: u64, b: u64| (a.saturating_sub(b) as f64 * 8.0 / secs) as u64;
                self.rate_out_bps.store(bps(out, o0), Ordering::Relaxed);
                self.rate_in_bps.store(bps(inb, i0), Ordering::Relaxed);
                *last = Some((now, out, inb));
            }
        }
        let sockets: Vec<(SocketSide, Arc<OwnedFd>)> = lock(&self.sockets).clone();
        let health: Vec<(SocketSide, TcpHealth)> =
            sockets.iter().filter_map(|(side, fd)| tcp::sample(fd.as_fd()).ok().map(|h| (*side, h))).collect();
        let retrans = health.iter().find(|(s, _)| *s == SocketSide::Mesh).map(|(_, h)| u64::from(h.total_retrans));
        if !health.is_empty() {
            *lock(&self.tcp) = health;
        }
        retrans.map_or(0, |r| r.saturating_sub(self.exported_retrans.fetch_max(r, Ordering::Relaxed)))
    }

    /// Bits per second out and in over the last sampling interval.
    pub fn rates(&self) -> (u64, u64) {
        (self.rate_out_bps.load(Ordering::Relaxed), self.rate_in_bps.load(Ordering::Relaxed))
    }

    /// The last TCP health sample of each socket.
    pub fn tcp(&self) -> Vec<(SocketSide, TcpHealth)> {
        lock(&self.tcp).clone()
    }

    pub fn tcp_of(&self, side: SocketSide) -> Option<TcpHealth> {
        lock(&self.tcp).iter().find(|(s, _)| *s == side).map(|(_, h)| *h)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn every_byte_is_exported_once() {
        let s = FlowStats::default();
        assert_eq!(s.unexported(100, 5), (100, 5));
        assert_eq!(s.unexported(100, 5), (0, 0));
        // A stale reader (smaller totals) never subtracts.
        assert_eq!(s.unexported(90, 5), (0, 0));
        assert_eq!(s.unexported(150, 6), (50, 1));
    }

    #[test]
    fn rates_and_tcp_health_are_sampled_from_attached_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = FlowStats::default();
        s.attach(SocketSide::Mesh, c.as_fd());
        let started = Instant::now() - Duration::from_secs(1);
        assert_eq!(s.sample(started, 1_000_000, 0), 0);
        let (out, inb) = s.rates();
        assert!((7_000_000..=8_000_000).contains(&out) && inb == 0, "{out}");
        assert!(s.tcp_of(SocketSide::Mesh).is_some());
        s.detach();
        assert!(s.sockets.lock().unwrap().is_empty());
    }
}
