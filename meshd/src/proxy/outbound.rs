//! Outbound: a workload's redirected connection, carried to the destination's agent.

use std::{net::SocketAddr, sync::Arc};

use ktls::CorkStream;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_rustls::TlsConnector;
use tracing::{field, info, info_span, warn, Instrument};

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
        src_id = %source.spiffe_id, peer_id = field::Empty, data_path = field::Empty);
    async move {
        info!("flow opened");
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
    let remote = SocketAddr::new(dst.ip(), agent.config.ports.inbound);
    let setup_err = |what: &str, e: &dyn std::fmt::Display| CloseReason::Setup(format!("{what} {remote}: {e}"));
    let std_sock =
        source.netns.socket_for(remote, meshd_common::AGENT_SOCKET_MARK).map_err(|e| setup_err("socket for", &e))?;
    let sock = TcpSocket::from_std_stream(std_sock.into());
    let tcp = timeout(SETUP_TIMEOUT, sock.connect(remote))
        .await
        .map_err(|_| setup_err("connect to the destination agent at", &"timed out"))?
        .map_err(|e| setup_err("connect to the destination agent at", &e))?;
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
    let mut tls = timeout(SETUP_TIMEOUT, connector.connect(name, CorkStream::new(tcp)))
        .await
        .map_err(|_| setup_err("TLS handshake with", &"timed out"))?
        .map_err(|e| setup_err("TLS handshake with", &e))?;
    let peer_id = crate::tls::peer_identity(tls.get_ref().1).map_err(|e| setup_err("peer identity of", &e))?;
    tracing::Span::current().record("peer_id", field::display(&peer_id));
    let _ = guard.flow.peer_identity.set(peer_id.to_string());

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
    Ok((tls, secrets))
}

/// Records the data path chosen for a flow.
pub fn record_path(guard: &FlowGuard, path: DataPath) {
    let _ = guard.flow.data_path.set(path);
    tracing::Span::current().record("data_path", path.label());
}
