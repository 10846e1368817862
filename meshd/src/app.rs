//! The agent: wires the data path, identities, workloads, listeners and the admin socket, and
//! runs until SIGTERM/SIGINT.
//!
//! Start-up order matters for failing closed: programs are attached to a workload's cgroup only
//! after its capture and inbound listeners exist, and links from a crashed earlier run are
//! released only after this run has attached its own.

mod access;
mod admin;
mod enroll;
mod observe;
mod policy;
mod start;
mod state;
mod status;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
};

use meshd_common::{FlowKey, OrigDst};
use tracing::{info, warn};

use crate::{
    config::{Config, DataPathMode},
    ebpf::Datapath,
    flows::FlowTable,
    identity::{IdentitySource, TrustDomain},
    metrics::Metrics,
    proxy::{ktls::KtlsSupport, splice::DEFAULT_RECORD_LIMIT},
    workload::{Registry, Workload},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] crate::ebpf::Error),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::Error),
    #[error(transparent)]
    Netns(#[from] crate::netns::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error(transparent)]
    Admin(#[from] crate::admin::Error),
    #[error("enroll workload {name}: {message}")]
    Enroll { name: String, message: String },
    #[error("unenroll workload {name}: not enrolled")]
    NotEnrolled { name: String },
    #[error("{source} — create the development CA first: `meshd ca init --dir {}`", dir.display())]
    NoCa { dir: PathBuf, source: crate::identity::Error },
    #[error(
        "{source} — restore the CA's files, or make a new CA (every SVID it issued stops being trusted): \
         `meshd ca init --dir {} --force`",
        dir.display()
    )]
    BadCa { dir: PathBuf, source: crate::identity::Error },
    #[error("kernel TLS is required (data_path: ktls) but unavailable: {0}")]
    KtlsRequired(String),
    #[error("install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::Error),
    #[error("read policy {path}: {source}")]
    PolicyRead { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    PolicyRecord(String),
    #[error("serve the admin listeners: they were already taken")]
    ListenersTaken,
}

/// The running agent, shared by every task.
pub struct Agent {
    pub config: Config,
    pub trust_domain: TrustDomain,
    pub cgroup_root: PathBuf,
    /// The agent's own cgroup (never enrolled, nor any cgroup above it).
    agent_cgroup: PathBuf,
    pub flows: Arc<FlowTable>,
    pub ktls: KtlsSupport,
    pub metrics: Arc<Metrics>,
    identity: Arc<dyn IdentitySource>,
    /// The identity source's change counter, and its value at start-up (rotations metric).
    identity_changes: tokio::sync::watch::Receiver<u64>,
    identity_changes_base: u64,
    datapath: Mutex<Option<Datapath>>,
    workloads: RwLock<Registry>,
    ready: AtomicBool,
    /// The agent's own `Arc`, for admin requests that spawn tasks.
    this: std::sync::OnceLock<std::sync::Weak<Agent>>,
    /// The authorization policy in force, and stable numbers for identities.
    policy: policy::PolicyState,
    /// Runtime-enrolled workloads of the previous run that could not be enrolled again.
    unrestored: Mutex<Vec<crate::config::WorkloadConfig>>,
    /// The admin socket and HTTP listeners, bound at start (before anything is attached) and
    /// served by [`Agent::serve`].
    listeners: Mutex<Option<Listeners>>,
}

/// The admin listeners bound at start.
struct Listeners {
    admin: tokio::net::UnixListener,
    http: Option<tokio::net::TcpListener>,
}

impl Agent {
    /// Runs the admin socket, the admin HTTP listener and the flow sampler, and waits for
    /// SIGTERM or SIGINT, then shuts down.
    pub async fn serve(self: Arc<Self>) -> Result<(), Error> {
        let path = self.config.admin_socket();
        let Listeners { admin: listener, http } = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or(Error::ListenersTaken)?;
        let http = observe::serve_http(&self, http);
        let sampler = tokio::spawn(observe::sampler(Arc::downgrade(&self)));
        let reaper = tokio::spawn(enroll::reaper(Arc::downgrade(&self)));
        let admin = tokio::spawn(crate::admin::server::serve(listener, path.clone(), Arc::clone(&self)));
        info!(node = %self.config.node, admin = %path.display(), workloads = self.workloads().len(), "agent ready");
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(Error::Signals)?;
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(Error::Signals)?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(Error::Signals)?;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break }
                _ = int.recv() => { info!("SIGINT: shutting down"); break }
                _ = hup.recv() => self.reload_policy(),
            }
        }
        admin.abort();
        sampler.abort();
        reaper.abort();
        if let Some(h) = http {
            h.abort();
        }
        let _ = std::fs::remove_file(&path);
        self.ready.store(false, Ordering::SeqCst);
        for w in self.workloads() {
            w.stop_listeners();
        }
        self.cut_all_flows("the agent is shutting down").await;
        match self.config.on_exit {
            crate::config::OnExit::Detach => self.shutdown(),
            crate::config::OnExit::KeepClosed => {
                // Dropping the datapath closes our descriptors; the pinned links keep the programs
                // attached, so enrolled workloads fail closed until an agent runs again.
                drop(self.lock_datapath().take());
                info!(
                    "exiting with the interception programs attached (on_exit: keep_closed): meshed connections of \
                       enrolled workloads are refused until meshd runs again; `on_exit: detach` uninstalls instead"
                );
            }
        }
        Ok(())
    }

    /// Ends every live flow (the applications see a reset, the peers an aborted TLS stream) and
    /// waits briefly for their tasks to log them.
    async fn cut_all_flows(&self, reason: &str) {
        let flows = self.flows.snapshot();
        if flows.is_empty() {
            return;
        }
        for f in &flows {
            f.cut(reason.into());
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while !self.flows.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        info!(flows = flows.len(), left = self.flows.len(), "live flows cut");
    }

    /// Detaches every program (workloads connect directly again) and removes the pins.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        for w in self.workloads() {
            w.stop_listeners();
        }
        if let Some(dp) = self.lock_datapath().take() {
            match dp.shutdown() {
                Ok(()) => info!("programs detached, pins removed"),
                Err(e) => warn!(error = %e, "clean detach failed"),
            }
        }
        // Uninstalled: a later agent has nothing to restore.
        let _ = std::fs::remove_file(self.state_path());
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn lock_datapath(&self) -> std::sync::MutexGuard<'_, Option<Datapath>> {
        self.datapath.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        self.workloads.read().unwrap_or_else(std::sync::PoisonError::into_inner).all()
    }

    pub fn workload_by_id(&self, id: u32) -> Option<Arc<Workload>> {
        self.workloads.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_id(id).cloned()
    }

    /// The original destination of a redirected flow, taken out of the map.
    pub fn take_orig_dst(&self, key: &FlowKey) -> Option<OrigDst> {
        self.lock_datapath().as_mut().and_then(|dp| dp.maps().take_orig_dst(key))
    }

    /// Whether new flows use kernel TLS.
    pub fn use_ktls(&self) -> bool {
        self.ktls.available && self.config.data_path != DataPathMode::Userspace
    }

    /// Whether flows capture their traffic secrets (kernel TLS that can take new keys).
    pub fn wants_secrets(&self) -> bool {
        self.use_ktls() && self.ktls.rekey
    }

    pub fn record_limit(&self) -> u64 {
        self.config.ktls_record_limit.unwrap_or(DEFAULT_RECORD_LIMIT)
    }

    /// May `peer` reach `workload` on `port`? The destination agent asks this for every flow.
    pub fn authorize_inbound(
        &self,
        peer: &crate::identity::SpiffeId,
        workload: &Workload,
        port: u16,
    ) -> Result<(), String> {
        let side = crate::metrics::PolicySide::Destination;
        if !peer.is_member_of(&self.trust_domain) {
            self.metrics.policy_denied(side, "foreign_trust_domain", peer.as_str(), workload.spiffe_id.as_str());
            return Err(format!("{peer} may not reach {} port {port}: foreign trust domain", workload.spiffe_id));
        }
        let target = crate::policy::Target { spiffe_id: &workload.spiffe_id, labels: &workload.labels };
        match self.current_policy().decide(peer, target, port) {
            crate::policy::Decision::Allow => Ok(()),
            crate::policy::Decision::Deny(reason) => {
                warn!(target: "meshd::access", event = "denied", side = "destination", peer = %peer,
                      workload = %workload.name, port, reason = %reason, "flow denied by policy");
                self.metrics.policy_denied(side, "policy", peer.as_str(), workload.spiffe_id.as_str());
                Err(reason)
            }
        }
    }
}
