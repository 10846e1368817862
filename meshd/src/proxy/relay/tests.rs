//! The userspace relay over real loopback sockets: half-close both ways, resets, bounded
//! buffering under a slow receiver, the idle timeout.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::flows::{Direction, FlowGuard, FlowTable};

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

fn flow() -> FlowGuard {
    let table = Arc::new(FlowTable::default());
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    table.open(Direction::Outbound, "w", "spiffe://t/w", addr, addr)
}

/// app ⇄ [relay] ⇄ remote: returns (app end, remote end, relay task, flow).
async fn setup(idle: Option<Duration>) -> (TcpStream, TcpStream, tokio::task::JoinHandle<CloseReason>, FlowGuard) {
    let (app, relay_plain) = pair().await;
    let (relay_remote, remote) = pair().await;
    let guard = flow();
    let f = Arc::clone(&guard.flow);
    let task = tokio::spawn(async move { relay(relay_plain, relay_remote, f, idle).await });
    (app, remote, task, guard)
}

#[tokio::test]
async fn half_closes_travel_both_ways_and_bytes_are_counted() {
    let (mut app, mut remote, task, guard) = setup(None).await;
    app.write_all(b"ping").await.unwrap();
    app.shutdown().await.unwrap();
    let mut got = Vec::new();
    remote.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ping", "the remote sees the data, then EOF");
    remote.write_all(b"pong!").await.unwrap();
    remote.shutdown().await.unwrap();
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"pong!", "the answer after the half-close arrives, then EOF");
    assert_eq!(task.await.unwrap(), CloseReason::Done);
    assert_eq!((guard.flow.bytes_out.load(Ordering::Relaxed), guard.flow.bytes_in.load(Ordering::Relaxed)), (4, 5));
}

#[tokio::test]
async fn a_reset_ends_the_relay_with_a_failure() {
    let (mut app, remote, task, _guard) = setup(None).await;
    app.write_all(b"x").await.unwrap();
    socket2::SockRef::from(&remote).set_linger(Some(Duration::ZERO)).unwrap();
    drop(remote);
    let reason = tokio::time::timeout(Duration::from_secs(5), task).await.expect("the relay must end").unwrap();
    assert!(reason.is_failure(), "{reason}");
}

#[tokio::test]
async fn a_slow_receiver_holds_the_sender_back() {
    let (app, mut remote, task, guard) = setup(None).await;
    const TOTAL: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut app = app;
        let chunk = vec![7u8; 1 << 16];
        for _ in 0..TOTAL / chunk.len() {
            app.write_all(&chunk).await.unwrap();
        }
        app.shutdown().await.unwrap();
        app
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = guard.flow.bytes_out.load(Ordering::Relaxed);
    // Nothing reads at the far end: the relay may only have moved what socket buffers hold.
    assert!(moved < (TOTAL / 4) as u64, "the relay buffered {moved} bytes for a receiver that reads nothing");
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = remote.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, TOTAL, "once the receiver reads, every byte arrives");
    drop(remote);
    let _ = writer.await.unwrap();
    let _ = task.await;
}

#[tokio::test]
async fn the_idle_timeout_closes_a_silent_flow_only_when_configured() {
    let (_app, _remote, task, _guard) = setup(Some(Duration::from_millis(200))).await;
    let start = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), task).await.expect("idle flow must end").unwrap();
    assert_eq!(reason, CloseReason::IdleTimeout);
    assert!(start.elapsed() >= Duration::from_millis(200));
    let (_app, _remote, task, _guard) = setup(None).await;
    assert!(tokio::time::timeout(Duration::from_millis(600), task).await.is_err(), "no idle timeout by default");
}
