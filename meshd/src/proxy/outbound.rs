//! Outbound: a workload's redirected connection, carried to the destination's agent.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use ktls::CorkStream;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_rustls::TlsConnector;
use tracing::{debug, debug_span, field, info_span, warn, Instrument};

use super::{
    header::{self, Request, Response, Status},
    rekey::SecretLog,
    reset_on_close, CloseReason, SETUP_TIMEOUT,
};
use crate::{
    app::Agent,
    ebpf::{flow_key, orig_addr},
    flows::{DataPath, Direction, FlowGuard},
    workload::Workload,
};

/// Handles one connection accepted on `workload`'s capture listener.
pub async fn handle(agent: Arc<Agent>, listener_workload: Arc<Workload>, sock: TcpStream, netns_cookie: u64) {
    let (Ok(peer), Ok(local)) = (sock.peer_addr(), sock.local_addr()) else {
        return;
    };
    let key = flow_key(netns_cookie, peer, local);
    let orig = agent.take_orig_dst(&key);
    let Some(orig) = orig else {
        warn!(workload = %listener_workload.name, %peer, "no original destination recorded for this connection; closing it");
        reset_on_close(&sock);
        return;
    };
    let dst = orig_addr(&orig);
    let source = agent.workload_by_id(orig.workload_id).unwrap_or(listener_workload);
    let guard = agent.flows.open(Direction::Outbound, &source.name, source.spiffe_id.as_str(), dst, peer);
    let span = info_span!("flow", id = guard.flow.id, dir = "outbound", src = %peer, dst = %dst,
        src_id = %source.spiffe_id, dst_id = field::Empty, workload = %source.name, data_path = field::Empty,
        bytes_out = field::Empty, bytes_in = field::Empty, reason = field::Empty, otel.status_code = field::Empty);
    async move {
        debug!("flow accepted");
        let reason = run(&agent, &source, sock, dst, &guard).await;
        agent.flow_closed(&guard, &reason);
    }
    .instrument(span)
    .await;
}

async fn run(
    agent: &Arc<Agent>,
    source: &Workload,
    sock: TcpStream,
    dst: SocketAddr,
    guard: &FlowGuard,
) -> CloseReason {
    let (tls, secrets) = match setup(agent, source, dst, guard).await {
        Ok(ok) => ok,
        Err(reason) => {
            warn!(reason = %reason, "flow refused");
            reset_on_close(&sock);
            return reason;
        }
    };
    super::inbound::data_phase(agent, sock, tokio_rustls::TlsStream::Client(tls), guard, secrets).await
}

type ClientTls = tokio_rustls::client::TlsStream<CorkStream<TcpStream>>;

/// Connects to the destination agent, handshakes, and exchanges the mesh header.
async fn setup(
    agent: &Agent,
    source: &Workload,
    dst: SocketAddr,
    guard: &FlowGuard,
) -> Result<(ClientTls, Option<Arc<SecretLog>>), CloseReason> {
    let flow_span = tracing::Span::current();
    let hs = debug_span!("handshake", peer_agent = field::Empty, handshake_error = field::Empty);
    let (mut tls, secrets) = handshake(agent, source, dst, guard, &flow_span).instrument(hs).await?;
    let remote = SocketAddr::new(dst.ip(), agent.config.ports.inbound);
    exchange(&mut tls, dst, remote).instrument(debug_span!("authorization", destination = %dst)).await?;
    Ok((tls, secrets))
}

/// TCP connect to the destination agent, TLS handshake, peer identity.
async fn handshake(
    agent: &Agent,
    source: &Workload,
    dst: SocketAddr,
    guard: &FlowGuard,
    flow_span: &tracing::Span,
) -> Result<(ClientTls, Option<Arc<SecretLog>>), CloseReason> {
    let remote = SocketAddr::new(dst.ip(), agent.config.ports.inbound);
    tracing::Span::current().record("peer_agent", field::display(remote));
    let setup_err = |what: &str, e: &dyn std::fmt::Display| CloseReason::Setup(format!("{what} {remote}: {e}"));
    let started = Instant::now();
    let std_sock =
        source.netns.socket_for(remote, meshd_common::AGENT_SOCKET_MARK).map_err(|e| setup_err("socket for", &e))?;
    let sock = TcpSocket::from_std_stream(std_sock.into());
    let connect_failed = |e: &dyn std::fmt::Display| {
        agent.metrics.handshake_failed(Direction::Outbound, "connect");
        setup_err("connect to the destination agent at", e)
    };
    let tcp = timeout(SETUP_TIMEOUT, sock.connect(remote))
        .await
        .map_err(|_| connect_failed(&"timed out"))?
        .map_err(|e| connect_failed(&e))?;
    // Where kernel TLS can rekey, capture this connection's traffic secrets for KeyUpdate.
    let secrets = agent.wants_secrets().then(|| Arc::new(SecretLog::default()));
    let config = match &secrets {
        Some(log) => {
            let mut c = (*source.client).clone();
            c.key_log = Arc::clone(log) as Arc<dyn rustls::KeyLog>;
            Arc::new(c)
        }
        None => Arc::clone(&source.client),
    };
    let connector = TlsConnector::from(config);
    let name = ServerName::IpAddress(dst.ip().into());
    let tls = match timeout(SETUP_TIMEOUT, connector.connect(name, CorkStream::new(tcp))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            agent.handshake_failed(Direction::Outbound, Some(&e));
            return Err(setup_err("TLS handshake with", &e));
        }
        Err(_) => {
            agent.handshake_failed(Direction::Outbound, None);
            return Err(setup_err("TLS handshake with", &"timed out"));
        }
    };
    let peer_id = crate::tls::peer_identity(tls.get_ref().1).map_err(|e| {
        agent.metrics.handshake_failed(Direction::Outbound, "peer_identity");
        setup_err("peer identity of", &e)
    })?;
    agent.handshake_done(Direction::Outbound, started.elapsed(), Some(guard));
    flow_span.record("dst_id", field::display(&peer_id));
    let _ = guard.flow.peer_identity.set(peer_id.to_string());
    Ok((tls, secrets))
}

/// Sends the mesh request; the destination agent authorizes it and answers.
async fn exchange(tls: &mut ClientTls, dst: SocketAddr, remote: SocketAddr) -> Result<(), CloseReason> {
    let setup_err = |what: &str, e: &dyn std::fmt::Display| CloseReason::Setup(format!("{what} {remote}: {e}"));
    let exchange = async {
        tls.write_all(&Request { destination: dst }.encode()).await?;
        tls.flush().await?;
        let mut head = [0u8; header::RESPONSE_HEAD_LEN];
        tls.read_exact(&mut head).await?;
        let (status, len) = Response::decode_head(&head).map_err(std::io::Error::other)?;
        let mut reason = vec![0u8; len];
        tls.read_exact(&mut reason).await?;
        Response::decode_reason(status, &reason).map_err(std::io::Error::other)
    };
    let response = timeout(SETUP_TIMEOUT, exchange)
        .await
        .map_err(|_| setup_err("mesh header exchange with", &"timed out"))?
        .map_err(|e| setup_err("mesh header exchange with", &e))?;
    if response.status != Status::Ok {
        return Err(CloseReason::Refused { status: response.status, reason: response.reason });
    }
    Ok(())
}

/// Records the data path chosen for a flow.
pub fn record_path(guard: &FlowGuard, path: DataPath) {
    let _ = guard.flow.data_path.set(path);
    tracing::Span::current().record("data_path", path.label());
}
