//! Start-up: checks, the data path, identities, the policy, the workloads (from the
//! configuration and those enrolled at runtime by the previous run), then the links an earlier
//! run left behind. A failed start detaches what it attached and leaves an earlier run's links in
//! place, so workloads that were meshed keep failing closed.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex, RwLock},
};

use tracing::{info, warn};

use super::{enroll, policy::PolicyState, state, Agent, Error};
use crate::{
    config::{Config, DataPathMode, Destination},
    ebpf::{object, Datapath, DatapathOptions, Prefix},
    flows::FlowTable,
    identity::TrustDomain,
    metrics::{labels::DEFAULT_MAX_PAIRS, Metrics},
    workload::Registry,
};

fn prefixes(list: &[Destination]) -> Vec<Prefix> {
    list.iter().filter_map(|d| d.parse().ok()).map(|p| Prefix { addr: p.addr, len: p.len, ports: p.ports }).collect()
}

impl Agent {
    /// Loads and attaches everything `config` asks for; the agent is ready when this returns.
    pub async fn start(config: Config, ebpf_object: Option<PathBuf>) -> Result<Arc<Self>, Error> {
        info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
        object::check_privileges()?;
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
        // The admin listeners before anything is attached: a port in use must not leave
        // workloads closed behind an agent that never ran.
        let listeners = match bind_listeners(&config).await {
            Ok(l) => l,
            Err(e) => {
                if let Err(cleanup) = datapath.abandon() {
                    warn!(error = %cleanup, "cleaning up after the failed start");
                }
                return Err(e);
            }
        };
        let prepared = (|| -> Result<_, Error> {
            datapath.maps().set_prefixes(&prefixes(&config.mesh.destinations), &prefixes(&config.mesh.exclude))?;
            datapath.attach_getsockopt(&agent_cgroup)?;
            enroll::identity_source(&config, &trust_domain)
        })();
        let identity = match prepared {
            Ok(identity) => identity,
            Err(e) => {
                if let Err(cleanup) = datapath.abandon() {
                    warn!(error = %cleanup, "cleaning up after the failed start");
                }
                let _ = std::fs::remove_file(config.admin_socket());
                return Err(e);
            }
        };
        let flows = Arc::new(FlowTable::default());
        let max_pairs = config.admin.max_identity_pairs.unwrap_or(DEFAULT_MAX_PAIRS);
        let metrics = Arc::new(Metrics::new(Arc::clone(&flows), max_pairs));
        let identity_changes = identity.changes();
        let identity_changes_base = *identity_changes.borrow();
        let agent = Arc::new(Self {
            config,
            trust_domain,
            cgroup_root,
            agent_cgroup,
            flows,
            ktls,
            metrics,
            identity,
            identity_changes,
            identity_changes_base,
            datapath: Mutex::new(Some(datapath)),
            workloads: RwLock::new(Registry::default()),
            ready: Default::default(),
            this: std::sync::OnceLock::new(),
            policy: PolicyState::default(),
            unrestored: Mutex::new(Vec::new()),
            listeners: Mutex::new(Some(listeners)),
        });
        let _ = agent.this.set(Arc::downgrade(&agent));
        if let Err(e) = agent.enroll_at_start().await {
            agent.abandon();
            return Err(e);
        }
        let existing = crate::cgroup::existing_ids(&agent.cgroup_root);
        if let Some(dp) = agent.lock_datapath().as_mut() {
            dp.release_stale(&existing);
        }
        agent.ready.store(true, Ordering::SeqCst);
        Ok(agent)
    }

    /// The policy (the configured file, else the one applied at runtime before the restart), the
    /// configured workloads (a failure stops the start), then the workloads the previous run had
    /// enrolled at runtime (one whose cgroup or namespace is gone is dropped with a warning; one
    /// that fails otherwise stays recorded, its cgroup closed, and is retried at the next start).
    async fn enroll_at_start(self: &Arc<Self>) -> Result<(), Error> {
        let record = self.policy_record_path();
        if let Some(path) = self.config.policy.clone() {
            self.apply_policy_file(&path)?;
            if record.exists() {
                warn!(file = %path.display(), "the policy applied at runtime before the restart is replaced by the \
                       configured policy file");
            }
            self.record_policy(None);
        } else if let Some(r) = state::load_policy(&record).map_err(Error::PolicyRecord)? {
            self.apply_policy(&r.source, &r.text).map_err(|e| {
                Error::PolicyRecord(format!(
                    "re-apply the policy applied at runtime before the restart (recorded in {}): {e}",
                    record.display()
                ))
            })?;
            info!(source = %r.source, "re-applied the policy applied at runtime before the restart");
        }
        for w in self.config.workloads.clone() {
            self.enroll(w).await?;
        }
        let configured: Vec<&str> = self.config.workloads.iter().map(|w| w.name.as_str()).collect();
        for w in state::load(&self.state_path()) {
            if configured.contains(&w.name.as_str()) {
                continue;
            }
            let (name, cgroup) = (w.name.clone(), w.cgroup.clone());
            let Err(e) = self.enroll(w.clone()).await else {
                info!(workload = %name, "re-enrolled a workload the previous run had enrolled");
                continue;
            };
            if crate::cgroup::resolve(&self.cgroup_root, &cgroup).is_ok() && w.netns.exists() {
                warn!(workload = %name, cgroup = %cgroup.display(), error = %e,
                      "could not enroll again a workload the previous run had enrolled: its cgroup stays closed \
                       until it is enrolled (retried at the next start) or unenrolled");
                self.unrestored().push(w);
            } else {
                warn!(workload = %name, cgroup = %cgroup.display(), error = %e,
                      "a workload the previous run had enrolled is gone; dropped");
            }
        }
        self.save_state();
        Ok(())
    }

    /// A failed start: detach this run's programs, keep an earlier run's, remove our pins.
    fn abandon(&self) {
        drop(self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        let _ = std::fs::remove_file(self.config.admin_socket());
        for w in self.workloads() {
            w.stop_listeners();
        }
        if let Some(dp) = self.lock_datapath().take() {
            if let Err(e) = dp.abandon() {
                warn!(error = %e, "cleaning up after the failed start");
            }
        }
    }
}

/// Binds the admin HTTP listener, if configured, then the admin socket (last: the only one that
/// leaves a file behind).
async fn bind_listeners(config: &Config) -> Result<super::Listeners, Error> {
    let http = match config.admin.http {
        Some(addr) => Some(crate::admin::http::bind(addr).await?),
        None => None,
    };
    let admin = crate::admin::server::bind(&config.admin_socket())?;
    Ok(super::Listeners { admin, http })
}
