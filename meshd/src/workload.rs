//! Enrolled workloads: a workload is a cgroup, the network namespace it lives in and a SPIFFE
//! identity. The agent serves each from outside its namespace: a capture listener (redirected
//! outbound connections) and an inbound listener (TLS from other agents) are created inside it.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::task::AbortHandle;

use crate::{identity::SpiffeId, netns::Netns};

/// One enrolled workload.
pub struct Workload {
    /// Numeric id in the eBPF maps.
    pub id: u32,
    pub name: String,
    pub spiffe_id: SpiffeId,
    pub labels: BTreeMap<String, String>,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub netns: Netns,
    pub netns_cookie: u64,
    /// Whether the IPv6 listeners are up.
    pub ipv6: bool,
    /// The numeric identity in the policy maps.
    pub identity: u32,
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
    /// The listener tasks; aborted on unenroll (flows already running go on).
    pub(crate) listeners: Mutex<Vec<AbortHandle>>,
}

impl Workload {
    /// Stops accepting new connections for this workload.
    pub fn stop_listeners(&self) {
        let handles = std::mem::take(&mut *self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for h in handles {
            h.abort();
        }
    }
}

/// The enrolled workloads, by name and by id.
#[derive(Default)]
pub struct Registry {
    by_name: HashMap<String, Arc<Workload>>,
    by_id: HashMap<u32, Arc<Workload>>,
    next_id: u32,
}

impl Registry {
    pub fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    pub fn insert(&mut self, w: Arc<Workload>) {
        self.by_id.insert(w.id, Arc::clone(&w));
        self.by_name.insert(w.name.clone(), w);
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<Workload>> {
        let w = self.by_name.remove(name)?;
        self.by_id.remove(&w.id);
        Some(w)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Workload>> {
        self.by_name.get(name)
    }

    pub fn by_id(&self, id: u32) -> Option<&Arc<Workload>> {
        self.by_id.get(&id)
    }

    pub fn all(&self) -> Vec<Arc<Workload>> {
        let mut v: Vec<_> = self.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
