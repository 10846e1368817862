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
    ebpf::{Datapath, DatapathOptions, Prefix},
    flows::FlowTable,
    identity::{IdentitySource, TrustDomain},
    metrics::{labels::DEFAULT_MAX_PAIRS, Metrics},
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
    #[error("kernel TLS is required (data_path: ktls) but unavailable: {0}")]
    KtlsRequired(String),
    #[error("install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The running agent, shared by every task.
pub struct Agent {
    pub config: Config,
    pub trust_domain: TrustDomain,
    pub cgroup_root: PathBuf,
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
}

impl Agent {
    /// Loads and attaches everything `config` asks for; the agent is ready when this returns.
    pub async fn start(config: Config, ebpf_object: Option<PathBuf>) -> Result<Arc<Self>, Error> {
        info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
        let trust_domain = TrustDomain::new(&config.trust_domain)?;
        let cgroup_root = match &config.cgroup_root {
            Some(root) => root.clone(),
            None => crate::cgroup::cgroup2_root()?,
        };
        let agent_cgroup = match &config.agent_cgroup {
            Some(c) => crate::cgroup::resolve(&cgroup_root, c)?,
            None => crate::cgroup::own_cgroup(&cgroup_root)?,
        };
        let ktls = crate::proxy::ktls::probe();
        match (config.data_path, ktls.available) {
            (DataPathMode::Ktls, false) => return Err(Error::KtlsRequired(ktls.detail)),
            (DataPathMode::Auto, false) => {
                warn!(reason = %ktls.detail, "kernel TLS unavailable: flows use the userspace (rustls) data path")
            }
            (DataPathMode::Userspace, false) => info!(reason = %ktls.detail, "kernel TLS unavailable"),
            (_, true) => info!(rekey = ktls.rekey, "kernel TLS available"),
        }
        let mut datapath = Datapath::load(&DatapathOptions {
            node: config.node.clone(),
            bpffs: config.bpffs.clone(),
            object: ebpf_object,
        })?;
        let prefixes = |list: &[crate::config::Destination]| -> Vec<Prefix> {
            list.iter()
                .filter_map(|d| d.parse().ok())
                .map(|p| Prefix { addr: p.addr, len: p.len, ports: p.ports })
                .collect()
        };
        datapath.maps().set_prefixes(&prefixes(&config.mesh.destinations), &prefixes(&config.mesh.exclude))?;
        datapath.attach_getsockopt(&agent_cgroup)?;
        let identity = enroll::identity_source(&config, &trust_domain)?;
        let flows = Arc::new(FlowTable::default());
        let max_pairs = config.admin.max_identity_pairs.unwrap_or(DEFAULT_MAX_PAIRS);
        let metrics = Arc::new(Metrics::new(Arc::clone(&flows), max_pairs));
        let identity_changes = identity.changes();
        let identity_changes_base = *identity_changes.borrow();
        let agent = Arc::new(Self {
            config,
            trust_domain,
            cgroup_root,
            flows,
            ktls,
            metrics,
            identity,
            identity_changes,
            identity_changes_base,
            datapath: Mutex::new(Some(datapath)),
            workloads: RwLock::new(Registry::default()),
            ready: AtomicBool::new(false),
            this: std::sync::OnceLock::new(),
        });
        let _ = agent.this.set(Arc::downgrade(&agent));
        for w in agent.config.workloads.clone() {
            if let Err(e) = agent.enroll(w).await {
                // Leave nothing behind: detach what was attached, remove the pins.
                agent.shutdown();
                return Err(e);
            }
        }
        if let Some(dp) = agent.lock_datapath().as_mut() {
            dp.release_stale();
        }
        agent.ready.store(true, Ordering::SeqCst);
        Ok(agent)
    }

    /// Runs the admin socket, the admin HTTP listener and the flow sampler, and waits for
    /// SIGTERM or SIGINT, then shuts down.
    pub async fn serve(self: Arc<Self>) -> Result<(), Error> {
        let path = self.config.admin_socket();
        let listener = crate::admin::server::bind(&path)?;
        let http = observe::start_http(&self).await?;
        let sampler = tokio::spawn(observe::sampler(Arc::downgrade(&self)));
        let admin = tokio::spawn(crate::admin::server::serve(listener, path.clone(), Arc::clone(&self)));
        info!(node = %self.config.node, admin = %path.display(), workloads = self.workloads().len(), "agent ready");
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(Error::Signals)?;
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(Error::Signals)?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        admin.abort();
        sampler.abort();
        if let Some(h) = http {
            h.abort();
        }
        let _ = std::fs::remove_file(&path);
        self.shutdown();
        Ok(())
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

    /// May `peer` reach `workload` on `port`? (Policy arrives with the authorization issue;
    /// until then every verified identity of the trust domain is allowed.)
    pub fn authorize_inbound(
        &self,
        peer: &crate::identity::SpiffeId,
        workload: &Workload,
        port: u16,
    ) -> Result<(), String> {
        if peer.is_member_of(&self.trust_domain) {
            Ok(())
        } else {
            Err(format!("{peer} may not reach {} port {port}: foreign trust domain", workload.spiffe_id))
        }
    }
}
