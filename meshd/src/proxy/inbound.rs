//! Inbound: a TLS connection from another agent to a local workload, and the data phase both
//! directions share.

use std::{net::SocketAddr, os::fd::AsFd, sync::Arc, time::Instant};

use ktls::CorkStream;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_rustls::{TlsAcceptor, TlsStream};
use tracing::{debug, debug_span, field, info_span, warn, Instrument};

use super::{
    header::{self, Request, Response, Status},
    outbound::record_path,
    rekey::SecretLog,
    relay::relay,
    reset_on_close, CloseReason, SETUP_TIMEOUT,
};
use crate::{
    app::Agent,
    flows::{DataPath, Direction, FlowGuard},
    identity::SpiffeId,
    metrics::tcp::SocketSide,
    workload::Workload,
};

type ServerTls = tokio_rustls::server::TlsStream<CorkStream<TcpStream>>;

/// Handles one connection accepted on `workload`'s inbound listener.
pub async fn handle(agent: Arc<Agent>, workload: Arc<Workload>, tcp: TcpStream) {
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    let span = info_span!("flow", id = field::Empty, dir = "inbound", src = %peer, dst = field::Empty,
        src_id = field::Empty, dst_id = %workload.spiffe_id, workload = %workload.name, data_path = field::Empty,
        bytes_out = field::Empty, bytes_in = field::Empty, reason = field::Empty, otel.status_code = field::Empty);
    async move {
        let started = Instant::now();
        let (mut tls, peer_id, dst, secrets) = match accept(&agent, &workload, tcp, local).await {
            Ok(ok) => ok,
            Err(reason) => {
                warn!(reason = %reason, "inbound flow refused");
                agent.setup_failed(Direction::Inbound, &reason);
                return;
            }
        };
        let guard = agent.flows.open(Direction::Inbound, &workload.name, workload.spiffe_id.as_str(), dst, peer);
        let _ = guard.flow.peer_identity.set(peer_id.to_string());
        let _ = guard.flow.stats.handshake.set(started.elapsed());
        tracing::Span::current().record("id", guard.flow.id);
        debug!("flow accepted");
        let connect = async {
            match connect_local(&workload, dst).await {
                Ok(backend) => match respond(&mut tls, Response::new(Status::Ok, "")).await {
                    Ok(()) => Ok(backend),
                    Err(e) => Err(CloseReason::Setup(format!("send the mesh response: {e}"))),
                },
                Err(response) => {
                    let _ = respond(&mut tls, response.clone()).await;
                    Err(CloseReason::Refused { status: response.status, reason: response.reason })
                }
            }
        };
        let reason = match connect.instrument(debug_span!("connect", destination = %dst)).await {
            Ok(backend) => data_phase(&agent, backend, TlsStream::Server(tls), &guard, secrets).await,
            Err(reason) => reason,
        };
        agent.flow_closed(&guard, &reason);
    }
    .instrument(span)
    .await;
}

/// Handshake, peer identity, mesh request, authorization.
async fn accept(
    agent: &Agent,
    workload: &Workload,
    tcp: TcpStream,
    local: SocketAddr,
) -> Result<(ServerTls, SpiffeId, SocketAddr, Option<Arc<SecretLog>>), CloseReason> {
    let flow_span = tracing::Span::current();
    let hs = debug_span!("handshake", handshake_error = field::Empty);
    let (mut tls, peer_id, secrets) = handshake(agent, workload, tcp).instrument(hs).await?;
    flow_span.record("src_id", field::display(&peer_id));
    let auth = debug_span!("authorization", destination = field::Empty);
    let dst = authorize(agent, workload, &mut tls, &peer_id, local).instrument(auth).await?;
    flow_span.record("dst", field::display(dst));
    Ok((tls, peer_id, dst, secrets))
}

async fn handshake(
    agent: &Agent,
    workload: &Workload,
    tcp: TcpStream,
) -> Result<(ServerTls, SpiffeId, Option<Arc<SecretLog>>), CloseReason> {
    let setup = |what: &str, e: &dyn std::fmt::Display| CloseReason::Setup(format!("{what}: {e}"));
    let started = Instant::now();
    let secrets = agent.wants_secrets().then(|| Arc::new(SecretLog::default()));
    let config = match &secrets {
        Some(log) => {
            let mut c = (*workload.server).clone();
            c.key_log = Arc::clone(log) as Arc<dyn rustls::KeyLog>;
            Arc::new(c)
        }
        None => Arc::clone(&workload.server),
    };
    let acceptor = TlsAcceptor::from(config);
    let tls = match timeout(SETUP_TIMEOUT, acceptor.accept(CorkStream::new(tcp))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            agent.handshake_failed(Direction::Inbound, Some(&e));
            return Err(setup("TLS handshake", &e));
        }
        Err(_) => {
            agent.handshake_failed(Direction::Inbound, None);
            return Err(setup("TLS handshake", &"timed out"));
        }
    };
    let peer_id = crate::tls::peer_identity(tls.get_ref().1).map_err(|e| {
        agent.metrics.handshake_failed(Direction::Inbound, "peer_identity");
        setup("peer identity", &e)
    })?;
    agent.handshake_done(Direction::Inbound, started.elapsed(), None);
    Ok((tls, peer_id, secrets))
}

/// Reads the mesh request and decides whether `peer_id` may reach its destination.
async fn authorize(
    agent: &Agent,
    workload: &Workload,
    tls: &mut ServerTls,
    peer_id: &SpiffeId,
    local: SocketAddr,
) -> Result<SocketAddr, CloseReason> {
    let setup = |what: &str, e: &dyn std::fmt::Display| CloseReason::Setup(format!("{what}: {e}"));
    let mut head = [0u8; header::REQUEST_LEN];
    timeout(SETUP_TIMEOUT, tls.read_exact(&mut head))
        .await
        .map_err(|_| setup("read the mesh request", &"timed out"))?
        .map_err(|e| setup("read the mesh request", &e))?;
    let dst = match Request::decode(&head) {
        Ok(r) => r.destination,
        Err(e) => {
            let reason = e.to_string();
            let _ = respond(tls, Response::new(Status::BadRequest, reason.clone())).await;
            return Err(CloseReason::Refused { status: Status::BadRequest, reason });
        }
    };
    tracing::Span::current().record("destination", field::display(dst));
    // The source agent connected to the original destination's address: anything else would
    // make this agent connect somewhere on the peer's behalf.
    if crate::ebpf::canonical_ip(dst.ip()) != crate::ebpf::canonical_ip(local.ip()) {
        let reason = format!("destination {dst} is not an address of workload {}", workload.name);
        let _ = respond(tls, Response::new(Status::BadRequest, reason.clone())).await;
        return Err(CloseReason::Refused { status: Status::BadRequest, reason });
    }
    let own_ports = [agent.config.ports.capture, agent.config.ports.inbound];
    if own_ports.contains(&dst.port()) {
        let reason = format!("port {} is meshd's own; it is never a mesh destination", dst.port());
        let _ = respond(tls, Response::new(Status::BadRequest, reason.clone())).await;
        return Err(CloseReason::Refused { status: Status::BadRequest, reason });
    }
    if let Err(reason) = agent.authorize_inbound(peer_id, workload, dst.port()) {
        let _ = respond(tls, Response::new(Status::Denied, reason.clone())).await;
        return Err(CloseReason::Refused { status: Status::Denied, reason });
    }
    Ok(dst)
}

async fn connect_local(workload: &Workload, dst: SocketAddr) -> Result<TcpStream, Response> {
    let fail = |status: Status, e: &dyn std::fmt::Display| Response::new(status, format!("connect to {dst}: {e}"));
    let sock =
        workload.netns.socket_for(dst, meshd_common::AGENT_SOCKET_MARK).map_err(|e| fail(Status::Internal, &e))?;
    match timeout(SETUP_TIMEOUT, TcpSocket::from_std_stream(sock.into()).connect(dst)).await {
        Err(_) => Err(fail(Status::Unreachable, &"timed out")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(fail(Status::Refused, &e)),
        Ok(Err(e)) => Err(fail(Status::Unreachable, &e)),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn respond(tls: &mut ServerTls, response: Response) -> std::io::Result<()> {
    timeout(SETUP_TIMEOUT, async {
        tls.write_all(&response.encode()).await?;
        tls.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "send the mesh response: timed out"))?
}

/// Moves the flow's data on the kernel TLS path when this agent uses it, else in userspace.
/// `plain` is the workload-side socket. Resets `plain` when the flow fails.
pub async fn data_phase(
    agent: &Arc<Agent>,
    plain: TcpStream,
    tls: TlsStream<CorkStream<TcpStream>>,
    guard: &FlowGuard,
    secrets: Option<Arc<SecretLog>>,
) -> CloseReason {
    let stats = &guard.flow.stats;
    stats.attach(SocketSide::Workload, plain.as_fd());
    match &tls {
        TlsStream::Client(c) => stats.attach(SocketSide::Mesh, c.get_ref().0.io.as_fd()),
        TlsStream::Server(s) => stats.attach(SocketSide::Mesh, s.get_ref().0.io.as_fd()),
    }
    let path = if agent.use_ktls() { DataPath::Ktls } else { DataPath::Userspace };
    record_path(guard, path);
    agent.flow_opened(guard);
    let span = debug_span!("data", data_path = path.label());
    let reason = move_data(agent, plain, tls, guard, secrets).instrument(span).await;
    // Before the sockets close: the sampler's duplicates must not hold them open.
    stats.detach();
    reason
}

async fn move_data(
    agent: &Arc<Agent>,
    mut plain: TcpStream,
    tls: TlsStream<CorkStream<TcpStream>>,
    guard: &FlowGuard,
    secrets: Option<Arc<SecretLog>>,
) -> CloseReason {
    {
        use std::os::fd::AsFd;
        let tls_fd = match &tls {
            TlsStream::Client(c) => c.get_ref().0.io.as_fd(),
            TlsStream::Server(s) => s.get_ref().0.io.as_fd(),
        };
        guard.flow.set_sockets(&[plain.as_fd(), tls_fd]);
    }
    // Armed for a crash: if the agent dies, the kernel closes this socket with a reset, so the
    // workload never mistakes a cut stream for a complete one. Disarmed on a clean end.
    let _ = socket2::SockRef::from(&plain).set_linger(Some(std::time::Duration::ZERO));
    if agent.use_ktls() {
        let secrets = secrets.and_then(|log| {
            let (state, client) = match &tls {
                TlsStream::Client(c) => (c.get_ref().1.negotiated_cipher_suite(), true),
                TlsStream::Server(s) => (s.get_ref().1.negotiated_cipher_suite(), false),
            };
            SecretLog::take(&log, state?, client)
        });
        match super::ktls::install(tls).await {
            Ok((drained, tcp)) => super::splice::run(agent, plain, tcp, drained, secrets, guard).await,
            Err(e) => {
                reset_on_close(&plain);
                CloseReason::Error(format!("hand the keys to kernel TLS: {e}"))
            }
        }
    } else {
        let mut tls = tls;
        let reason = relay(&mut plain, &mut tls, Arc::clone(&guard.flow), agent.config.idle_timeout).await;
        if !reason.is_failure() {
            let _ = socket2::SockRef::from(&plain).set_linger(None);
        }
        reason
    }
}
