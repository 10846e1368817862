//! Enrolling and unenrolling workloads, and their listener loops.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use meshd_common::AGENT_SOCKET_MARK;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{Agent, Error};
use crate::{
    config::{Config, WorkloadConfig},
    identity::{CaSource, CaSourceConfig, DevCa, FileSource, FileSourceConfig, IdentitySource, SpiffeId, TrustDomain},
    netns::{netns_cookie, Netns},
    workload::Workload,
};

/// The identity source the configuration names.
pub fn identity_source(config: &Config, td: &TrustDomain) -> Result<Arc<dyn IdentitySource>, Error> {
    if let Some(ca) = &config.identity.dev_ca {
        let dev = DevCa::load(&ca.dir).map_err(|source| {
            let dir = ca.dir.clone();
            if dir.join("ca.crt").exists() || dir.join("ca.key").exists() {
                Error::BadCa { dir, source }
            } else {
                Error::NoCa { dir, source }
            }
        })?;
        let source = CaSource::start(dev, CaSourceConfig { ttl: ca.svid_ttl, ..CaSourceConfig::default() })?;
        return Ok(source);
    }
    let files = config
        .identity
        .files
        .as_ref()
        .ok_or_else(|| Error::Enroll { name: "-".into(), message: "no identity source configured".into() })?;
    let mut identities = Vec::new();
    for w in &config.workloads {
        identities.push((SpiffeId::new(&w.spiffe_id)?, files.dir.join(&w.name)));
    }
    let source: Arc<dyn IdentitySource> = FileSource::start(FileSourceConfig::new(td.clone(), identities))?;
    Ok(source)
}

impl Agent {
    /// Enrolls a workload: listeners in its namespace first, then its programs.
    pub async fn enroll(self: &Arc<Self>, cfg: WorkloadConfig) -> Result<Arc<Workload>, Error> {
        let fail = |message: String| Error::Enroll { name: cfg.name.clone(), message };
        if !crate::config::valid_name(&cfg.name) {
            return Err(fail(format!("the name must be {}", crate::config::NAME_RULE)));
        }
        crate::config::check_spiffe_id(&cfg.spiffe_id, &self.config.trust_domain).map_err(&fail)?;
        if self.workloads.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_name(&cfg.name).is_some() {
            return Err(fail("a workload of that name is already enrolled".into()));
        }
        let spiffe_id = SpiffeId::new(&cfg.spiffe_id)?;
        let cgroup = crate::cgroup::resolve(&self.cgroup_root, &cfg.cgroup)?;
        let cgroup_id = crate::cgroup::cgroup_id(&cgroup)?;
        if let Some(other) = self.workloads().into_iter().find(|w| w.cgroup_id == cgroup_id) {
            return Err(fail(format!("cgroup {} is already enrolled as workload {}", cgroup.display(), other.name)));
        }
        if cgroup == self.cgroup_root || self.agent_cgroup.starts_with(&cgroup) {
            return Err(fail(format!(
                "cgroup {} holds the agent's own cgroup {} (or is the cgroup root): its connections would be \
                 intercepted too; enroll the pod's own cgroup",
                cgroup.display(),
                self.agent_cgroup.display()
            )));
        }
        let netns = Netns::open(&cfg.netns)?;
        if let Some(other) = self.workloads().into_iter().find(|w| same_file(w.netns.path(), &cfg.netns)) {
            return Err(fail(format!(
                "network namespace {} is already served for workload {} (one workload per pod namespace: put the \
                 pod's processes in one cgroup)",
                cfg.netns.display(),
                other.name
            )));
        }
        if let Some(files) = &self.config.identity.files {
            // The file source reads `<dir>/<workload>/{tls.crt,tls.key,ca.crt}`.
            self.identity.watch_identity(&spiffe_id, &files.dir.join(&cfg.name))?;
        }
        let client =
            crate::tls::client_config(Arc::clone(&self.identity), spiffe_id.clone(), self.trust_domain.clone())?;
        let server =
            crate::tls::server_config(Arc::clone(&self.identity), spiffe_id.clone(), self.trust_domain.clone())?;
        let ports = &self.config.ports;
        let listen = |addr: SocketAddr| netns.listen(addr, AGENT_SOCKET_MARK).map_err(|e| fail(e.to_string()));
        let capture4 = listen(SocketAddr::from(([127, 0, 0, 1], ports.capture)))?;
        let inbound4 = listen(SocketAddr::from(([0, 0, 0, 0], ports.inbound)))?;
        let capture6 = optional_v6(&netns, &format!("[::1]:{}", ports.capture), &cfg.name);
        let inbound6 = optional_v6(&netns, &format!("[::]:{}", ports.inbound), &cfg.name);
        let cookie = netns_cookie(&capture4)?;
        let ipv6 = capture6.is_some() && inbound6.is_some();
        let id = self.workloads.write().unwrap_or_else(std::sync::PoisonError::into_inner).next_id();
        let identity = self.policy.number(&(spiffe_id.clone(), cfg.labels.clone()));
        let workload = Arc::new(Workload {
            id,
            name: cfg.name.clone(),
            spiffe_id,
            labels: cfg.labels.clone(),
            cgroup: cgroup.clone(),
            cgroup_id,
            netns,
            netns_cookie: cookie,
            ipv6,
            identity,
            client,
            server,
            listeners: Default::default(),
        });
        let mut handles = Vec::new();
        for l in [Some(capture4), capture6].into_iter().flatten() {
            let l = TcpListener::from_std(l).map_err(|e| fail(format!("register capture listener: {e}")))?;
            handles.push(tokio::spawn(capture_loop(Arc::clone(self), Arc::clone(&workload), l)).abort_handle());
        }
        for l in [Some(inbound4), inbound6].into_iter().flatten() {
            let l = TcpListener::from_std(l).map_err(|e| fail(format!("register inbound listener: {e}")))?;
            handles.push(tokio::spawn(inbound_loop(Arc::clone(self), Arc::clone(&workload), l)).abort_handle());
        }
        *workload.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = handles;
        let info = self.workload_info(&workload, None);
        let attached = match self.lock_datapath().as_mut() {
            Some(dp) => dp.enroll(&cgroup, info).map(|_| ()),
            None => Ok(()),
        };
        if let Err(e) = attached {
            workload.stop_listeners();
            return Err(e.into());
        }
        self.workloads.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(Arc::clone(&workload));
        // The new workload is a source of connect-time verdicts.
        self.reinstall_policy()?;
        self.unrestored().retain(|u| u.name != cfg.name);
        self.save_state();
        info!(workload = %workload.name, spiffe_id = %workload.spiffe_id, cgroup = %cgroup.display(),
              netns = %cfg.netns.display(), ipv6, "workload enrolled");
        Ok(workload)
    }

    /// Unenrolls a workload: its programs are detached first (it connects directly again),
    /// then its listeners stop. Flows already running go on until they end.
    pub fn unenroll(&self, name: &str) -> Result<(), Error> {
        if self.forget_unrestored(name) {
            return Ok(());
        }
        let w = self
            .workloads
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_name(name)
            .cloned()
            .ok_or_else(|| Error::NotEnrolled { name: name.into() })?;
        if let Some(dp) = self.lock_datapath().as_mut() {
            dp.unenroll(w.cgroup_id)?;
        }
        self.workloads.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        w.stop_listeners();
        self.reinstall_policy()?;
        self.save_state();
        info!(workload = %name, "workload unenrolled");
        Ok(())
    }
}

impl Agent {
    /// Unenrolls a workload the previous run had enrolled and this start could not: releases the
    /// earlier run's links on its cgroup and forgets it. False if `name` is not such a workload.
    fn forget_unrestored(&self, name: &str) -> bool {
        let w = {
            let mut unrestored = self.unrestored();
            let Some(pos) = unrestored.iter().position(|u| u.name == name) else { return false };
            unrestored.remove(pos)
        };
        let id = crate::cgroup::resolve(&self.cgroup_root, &w.cgroup).and_then(|c| crate::cgroup::cgroup_id(&c));
        if let (Ok(id), Some(dp)) = (id, self.lock_datapath().as_mut()) {
            dp.release_earlier(id);
        }
        self.save_state();
        info!(workload = %name, cgroup = %w.cgroup.display(), "unenrolled a workload this start had not restored");
        true
    }
}

fn optional_v6(netns: &Netns, addr: &str, name: &str) -> Option<std::net::TcpListener> {
    let addr: SocketAddr = addr.parse().ok()?;
    match netns.listen(addr, AGENT_SOCKET_MARK) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(workload = %name, error = %e, "no IPv6 listener: IPv6 flows of this workload will be refused");
            None
        }
    }
}

async fn capture_loop(agent: Arc<Agent>, workload: Arc<Workload>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(crate::proxy::outbound::handle(
                    Arc::clone(&agent),
                    Arc::clone(&workload),
                    sock,
                    workload.netns_cookie,
                ));
            }
            Err(e) => accept_failed(&workload, &e).await,
        }
    }
}

async fn inbound_loop(agent: Arc<Agent>, workload: Arc<Workload>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(crate::proxy::inbound::handle(Arc::clone(&agent), Arc::clone(&workload), sock));
            }
            Err(e) => accept_failed(&workload, &e).await,
        }
    }
}

async fn accept_failed(workload: &Workload, e: &std::io::Error) {
    warn!(workload = %workload.name, error = %e, "accept failed");
    // Out of file descriptors and the like: back off rather than spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Unenrolls workloads whose cgroup has disappeared (a pod deleted without `meshd unenroll`),
/// every few seconds, so the agent does not keep serving, and holding, a dead namespace.
pub(super) async fn reaper(agent: std::sync::Weak<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(agent) = agent.upgrade() else { return };
        for w in agent.workloads() {
            if !w.cgroup.exists() {
                match agent.unenroll(&w.name) {
                    Ok(()) => {
                        info!(workload = %w.name, cgroup = %w.cgroup.display(), "the workload's cgroup is gone: unenrolled")
                    }
                    Err(e) => warn!(workload = %w.name, error = %e, "unenroll a workload whose cgroup is gone"),
                }
            }
        }
    }
}

/// Whether two paths name the same file (two names of one network namespace, say).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}
