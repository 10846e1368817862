//! The kernel TLS data path: two blocking threads per flow move bytes with splice(2) through a
//! pipe — workload socket → kTLS socket (the kernel encrypts) and kTLS socket → workload socket
//! (the kernel decrypts) — so media never enters the agent's memory. Splicing into a kTLS
//! socket must be blocking (non-blocking splice into kTLS TX has been reported to lose records).
//!
//! Control records: splice refuses a non-data record at the head of the kTLS receive queue with
//! EINVAL; it is then read with recvmsg: close_notify ends the direction, other alerts fail the
//! flow, NewSessionTicket is ignored, KeyUpdate fails the flow (this agent never requests one on
//! kernels that cannot rekey; see `docs/ARCHITECTURE.md`).
//!
//! Record limit: each direction counts the records it sends (at most ceil(n / 16 KiB) per
//! splice). AES-GCM must not encrypt more than 2^24.5 records under one key. At the configured
//! limit the sender performs a TLS 1.3 KeyUpdate where the kernel can take new keys (≥ 6.14,
//! see `rekey.rs`); elsewhere the flow is closed cleanly, with a log line, rather than risk the
//! key. A KeyUpdate from the peer is applied the same way (and answered when it asks).

use std::{
    io::{self, Write},
    net::Shutdown,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use ktls_sys::bindings as sys;
use nix::fcntl::{splice, SpliceFFlags};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{
    ktls,
    rekey::{Secret, KEY_UPDATE},
    relay::idle_watch,
    reset_on_close, CloseReason,
};
use crate::{app::Agent, flows::Flow};

const CHUNK: usize = 64 * 1024;
const MAX_RECORD: u64 = 16 * 1024;
/// Default records per key before a kTLS flow is closed: below AES-GCM's 2^24.5 limit.
pub const DEFAULT_RECORD_LIMIT: u64 = 1 << 24;

enum End {
    Clean,
    Fail(CloseReason),
}

/// Runs the flow to its end on the kernel TLS path.
pub async fn run(
    agent: &Arc<Agent>,
    plain: TcpStream,
    tls: TcpStream,
    drained: Option<Vec<u8>>,
    secrets: Option<(Secret, Secret)>,
    guard: &crate::flows::FlowGuard,
) -> CloseReason {
    let (plain, tls) = match (blocking(plain), blocking(tls)) {
        (Ok(p), Ok(t)) => (Arc::new(p), Arc::new(t)),
        (Err(e), _) | (_, Err(e)) => return CloseReason::Error(format!("prepare sockets for splice: {e}")),
    };
    let limit = agent.record_limit();
    let flow = Arc::clone(&guard.flow);
    let (tx_secret, rx_secret) = match secrets {
        Some((tx, rx)) => (Some(tx), Some(rx)),
        None => (None, None),
    };
    // Set by the receiving thread when the peer's KeyUpdate asks for ours.
    let update_requested = Arc::new(AtomicBool::new(false));
    let (out_tx, out_rx) = tokio::sync::oneshot::channel();
    let (in_tx, in_rx) = tokio::sync::oneshot::channel();
    {
        let (p, t, f, u) = (Arc::clone(&plain), Arc::clone(&tls), Arc::clone(&flow), Arc::clone(&update_requested));
        let span = tracing::Span::current();
        std::thread::spawn(move || {
            let _entered = span.enter();
            let _ = out_tx.send(finish(&p, &t, pump_out(&p, &t, &f, limit, tx_secret, &u)));
        });
    }
    {
        let (p, t, f, u) = (Arc::clone(&plain), Arc::clone(&tls), Arc::clone(&flow), Arc::clone(&update_requested));
        let span = tracing::Span::current();
        std::thread::spawn(move || {
            let _entered = span.enter();
            let _ = in_tx.send(finish(&p, &t, pump_in(&t, &p, &f, drained, rx_secret, &u)));
        });
    }
    let both = async { (out_rx.await, in_rx.await) };
    let (a, b) = match agent.config.idle_timeout {
        None => both.await,
        Some(limit) => {
            tokio::pin!(both);
            tokio::select! {
                r = &mut both => r,
                () = idle_watch(&flow, limit) => {
                    abort(&plain, &tls);
                    let _ = both.await;
                    return CloseReason::IdleTimeout;
                }
            }
        }
    };
    match (a, b) {
        (Ok(End::Clean), Ok(End::Clean)) => {
            // A clean end: close the workload's socket normally (see the crash-time reset armed
            // in the data phase).
            let _ = socket2::SockRef::from(&*plain).set_linger(None);
            CloseReason::Done
        }
        (Ok(End::Fail(r)), _) | (_, Ok(End::Fail(r))) => r,
        _ => CloseReason::Error("splice thread vanished".into()),
    }
}

fn blocking(s: TcpStream) -> io::Result<std::net::TcpStream> {
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// On failure, resets the workload side and unblocks the other direction.
fn finish(plain: &std::net::TcpStream, tls: &std::net::TcpStream, r: Result<(), CloseReason>) -> End {
    match r {
        Ok(()) => End::Clean,
        Err(reason) => {
            abort(plain, tls);
            End::Fail(reason)
        }
    }
}

fn abort(plain: &std::net::TcpStream, tls: &std::net::TcpStream) {
    reset_on_close(plain);
    let _ = plain.shutdown(Shutdown::Both);
    let _ = tls.shutdown(Shutdown::Both);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), CloseReason> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| CloseReason::Error(format!("create pipe: {e}")))
}

fn io_fail(what: &str, e: impl Into<io::Error>) -> CloseReason {
    let e: io::Error = e.into();
    match CloseReason::from_io(&e) {
        CloseReason::Error(m) => CloseReason::Error(format!("{what}: {m}")),
        other => other,
    }
}

/// Moves `n` bytes from the pipe into `to`.
fn drain_pipe(pipe_r: &OwnedFd, to: &impl AsFd, mut n: usize) -> Result<(), CloseReason> {
    while n > 0 {
        let m = splice(pipe_r, None, to, None, n, SpliceFFlags::SPLICE_F_MOVE).map_err(|e| io_fail("splice out", e))?;
        if m == 0 {
            return Err(CloseReason::Reset);
        }
        n -= m;
    }
    Ok(())
}

/// Sends KeyUpdate under the current key, then switches the kernel to the next one.
fn update_tx(tls: &std::net::TcpStream, secret: &mut Secret) -> Result<(), CloseReason> {
    ktls::send_record(tls.as_raw_fd(), ktls::RECORD_HANDSHAKE, &KEY_UPDATE)
        .map_err(|e| io_fail("send KeyUpdate", e))?;
    let info = secret.update().ok_or_else(|| CloseReason::Error("derive the next transmit key".into()))?;
    info.install(tls.as_raw_fd(), sys::TLS_TX).map_err(|e| io_fail("install the next transmit key", e))?;
    info!("kernel TLS transmit key updated (KeyUpdate sent)");
    Ok(())
}

/// workload → kTLS (encrypting).
fn pump_out(
    plain: &std::net::TcpStream,
    tls: &std::net::TcpStream,
    flow: &Flow,
    limit: u64,
    mut secret: Option<Secret>,
    update_requested: &AtomicBool,
) -> Result<(), CloseReason> {
    let (pipe_r, pipe_w) = pipe()?;
    let mut records = 0u64;
    loop {
        let n = splice(plain, None, &pipe_w, None, CHUNK, SpliceFFlags::SPLICE_F_MOVE)
            .map_err(|e| io_fail("splice from the workload", e))?;
        if flow.is_cut() {
            return Err(CloseReason::Cancelled("flow cut by the agent".into()));
        }
        if n == 0 {
            ktls::send_close_notify(tls.as_raw_fd()).map_err(|e| io_fail("send close_notify", e))?;
            let _ = tls.shutdown(Shutdown::Write);
            return Ok(());
        }
        if update_requested.swap(false, Ordering::SeqCst) {
            if let Some(s) = secret.as_mut() {
                update_tx(tls, s)?;
                records = 0;
            }
        }
        // Never let one key encrypt more than `limit` records: change it (or end the flow)
        // before the splice that would cross the limit.
        let adding = (n as u64).div_ceil(MAX_RECORD);
        if records + adding > limit {
            match secret.as_mut() {
                Some(s) => {
                    update_tx(tls, s)?;
                    records = 0;
                }
                None => {
                    warn!(
                        records,
                        limit,
                        "kernel TLS record limit for this key reached and this kernel cannot rekey; closing the flow"
                    );
                    let _ = ktls::send_close_notify(tls.as_raw_fd());
                    return Err(CloseReason::RecordLimit);
                }
            }
        }
        drain_pipe(&pipe_r, tls, n)?;
        flow.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        records += adding;
    }
}

/// kTLS → workload (decrypting).
fn pump_in(
    tls: &std::net::TcpStream,
    mut plain: &std::net::TcpStream,
    flow: &Flow,
    drained: Option<Vec<u8>>,
    mut secret: Option<Secret>,
    update_requested: &AtomicBool,
) -> Result<(), CloseReason> {
    if let Some(bytes) = drained {
        plain.write_all(&bytes).map_err(|e| io_fail("write drained bytes", e))?;
        flow.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    let (pipe_r, pipe_w) = pipe()?;
    let mut record = vec![0u8; 16 * 1024 + 256];
    loop {
        match splice(tls, None, &pipe_w, None, CHUNK, SpliceFFlags::SPLICE_F_MOVE) {
            Ok(0) => return Err(CloseReason::Error("the peer closed without close_notify (truncated)".into())),
            Ok(_) if flow.is_cut() => return Err(CloseReason::Cancelled("flow cut by the agent".into())),
            Ok(n) => {
                drain_pipe(&pipe_r, &plain, n)?;
                flow.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(nix::errno::Errno::EINVAL) => {
                let (kind, n) =
                    ktls::recv_record(tls.as_raw_fd(), &mut record).map_err(|e| io_fail("read a TLS record", e))?;
                match (kind, &record[..n]) {
                    (ktls::RECORD_ALERT, [_, 0]) => {
                        debug!("close_notify received");
                        let _ = plain.shutdown(Shutdown::Write);
                        return Ok(());
                    }
                    (ktls::RECORD_ALERT, [_, desc]) => {
                        return Err(CloseReason::Error(format!("TLS alert {desc} from the peer")))
                    }
                    (ktls::RECORD_HANDSHAKE, [4, ..]) => debug!("ignoring a NewSessionTicket"),
                    (ktls::RECORD_HANDSHAKE, [24, 0, 0, 1, request]) => {
                        let Some(s) = secret.as_mut() else {
                            return Err(CloseReason::Error(
                                "the peer sent a TLS KeyUpdate this kernel cannot apply".into(),
                            ));
                        };
                        // The new key must be in place before the next read.
                        let info =
                            s.update().ok_or_else(|| CloseReason::Error("derive the next receive key".into()))?;
                        info.install(tls.as_raw_fd(), sys::TLS_RX)
                            .map_err(|e| io_fail("install the next receive key", e))?;
                        info!(update_requested = *request == 1, "kernel TLS receive key updated (KeyUpdate received)");
                        if *request == 1 {
                            update_requested.store(true, Ordering::SeqCst);
                        }
                    }
                    (ktls::RECORD_APPLICATION_DATA, data) => {
                        plain.write_all(data).map_err(|e| io_fail("write to the workload", e))?;
                        flow.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    (0, _) => {
                        return Err(CloseReason::Error("the peer closed without close_notify (truncated)".into()))
                    }
                    (kind, _) => return Err(CloseReason::Error(format!("unexpected TLS record type {kind}"))),
                }
            }
            Err(e) => return Err(io_fail("splice from kernel TLS", e)),
        }
    }
}
