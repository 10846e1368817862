//! Inbound: a TLS connection from another agent to a local workload, and the data phase both
//! directions share.

use std::{net::SocketAddr, sync::Arc};

use ktls::CorkStream;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_rustls::{TlsAcceptor, TlsStream};
use tracing::{field, info, info_span, warn, Instrument};

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
    workload::Workload,
};

type ServerTls = tokio_rustls::server::TlsStream<CorkStream<TcpStream>>;

/// Handles one connection accepted on `workload`'s inbound listener.
pub async fn handle(agent: Arc<Agent>, workload: Arc<Workload>, tcp: TcpStream) {
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    let span = info_span!("inbound", workload = %workload.name, %peer, peer_id = field::Empty);
    async move {
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
        let span = info_span!("flow", id = guard.flow.id, dir = "inbound", src = %peer, dst = %dst,
            src_id = %peer_id, local_id = %workload.spiffe_id, data_path = field::Empty);
        async {
            info!("flow opened");
            let reason = match connect_local(&workload, dst).await {
                Ok(backend) => match respond(&mut tls, Response::new(Status::Ok, "")).await {
                    Ok(()) => data_phase(&agent, backend, TlsStream::Server(tls), &guard, secrets).await,
                    Err(e) => CloseReason::Setup(format!("send the mesh response: {e}")),
                },
                Err(response) => {
                    let _ = respond(&mut tls, response.clone()).await;
                    CloseReason::Refused { status: response.status, reason: response.reason }
                }
            };
            agent.flow_closed(&guard, &reason);
        }
        .instrument(span)
        .await;
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
    let setup = |what: &str, e: &dyn std::fmt::Display| CloseReason::Setup(format!("{what}: {e}"));
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
    let mut tls = timeout(SETUP_TIMEOUT, acceptor.accept(CorkStream::new(tcp)))
        .await
        .map_err(|_| setup("TLS handshake", &"timed out"))?
        .map_err(|e| setup("TLS handshake", &e))?;
    let peer_id = crate::tls::peer_identity(tls.get_ref().1).map_err(|e| setup("peer identity", &e))?;
    tracing::Span::current().record("peer_id", field::display(&peer_id));
    let mut head = [0u8; header::REQUEST_LEN];
    timeout(SETUP_TIMEOUT, tls.read_exact(&mut head))
        .await
        .map_err(|_| setup("read the mesh request", &"timed out"))?
        .map_err(|e| setup("read the mesh request", &e))?;
    let dst = match Request::decode(&head) {
        Ok(r) => r.destination,
        Err(e) => {
            let reason = e.to_string();
            let _ = respond(&mut tls, Response::new(Status::BadRequest, reason.clone())).await;
            return Err(CloseReason::Refused { status: Status::BadRequest, reason });
        }
    };
    // The source agent connected to the original destination's address: anything else would
    // make this agent connect somewhere on the peer's behalf.
    if crate::ebpf::canonical_ip(dst.ip()) != crate::ebpf::canonical_ip(local.ip()) {
        let reason = format!("destination {dst} is not an address of workload {}", workload.name);
        let _ = respond(&mut tls, Response::new(Status::BadRequest, reason.clone())).await;
        return Err(CloseReason::Refused { status: Status::BadRequest, reason });
    }
    if let Err(reason) = agent.authorize_inbound(&peer_id, workload, dst.port()) {
        let _ = respond(&mut tls, Response::new(Status::Denied, reason.clone())).await;
        return Err(CloseReason::Refused { status: Status::Denied, reason });
    }
    Ok((tls, peer_id, dst, secrets))
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
    let reason = if agent.use_ktls() {
        record_path(guard, DataPath::Ktls);
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
        record_path(guard, DataPath::Userspace);
        let mut tls = tls;
        let reason = relay(&mut plain, &mut tls, Arc::clone(&guard.flow), agent.config.idle_timeout).await;
        if reason.is_failure() {
            reset_on_close(&plain);
        }
        reason
    };
    reason
}
