//! The userspace data path: bytes move between the workload socket and rustls with bounded
//! buffers (a slow receiver slows the sender; memory per flow is two 64 KiB buffers).
//! Half-closes propagate (EOF on one side becomes close_notify + FIN, or FIN, on the other).
//! When a direction fails, the relay stops at once and reports why; the caller resets the
//! workload socket so the application sees the failure. Counters update as bytes move.

use std::{
    io,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::CloseReason;
use crate::flows::Flow;

const BUF: usize = 64 * 1024;

/// Relays until both directions have ended or one fails.
pub async fn relay<P, T>(plain: P, tls: T, flow: Arc<Flow>, idle: Option<Duration>) -> CloseReason
where
    P: AsyncRead + AsyncWrite,
    T: AsyncRead + AsyncWrite,
{
    let (mut plain_r, mut plain_w) = tokio::io::split(plain);
    let (mut tls_r, mut tls_w) = tokio::io::split(tls);
    let both = async {
        tokio::try_join!(pump(&mut plain_r, &mut tls_w, &flow, true), pump(&mut tls_r, &mut plain_w, &flow, false))
    };
    let result = match idle {
        None => both.await,
        Some(limit) => tokio::select! {
            r = both => r,
            () = idle_watch(&flow, limit) => return CloseReason::IdleTimeout,
        },
    };
    match result {
        Ok(_) => CloseReason::Done,
        Err(e) => CloseReason::from_io(&e),
    }
}

async fn pump<R, W>(r: &mut R, w: &mut W, flow: &Flow, outbound: bool) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counter = if outbound { &flow.bytes_out } else { &flow.bytes_in };
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if flow.is_cut() {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "flow cut by the agent"));
        }
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Resolves once no byte has moved in either direction for `limit`.
pub async fn idle_watch(flow: &Flow, limit: Duration) {
    let step = (limit / 4).max(Duration::from_millis(10));
    let total = || flow.bytes_out.load(Ordering::Relaxed) + flow.bytes_in.load(Ordering::Relaxed);
    let (mut last, mut quiet) = (total(), Duration::ZERO);
    loop {
        tokio::time::sleep(step).await;
        let now = total();
        if now == last {
            quiet += step;
            if quiet >= limit {
                return;
            }
        } else {
            (last, quiet) = (now, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests;
