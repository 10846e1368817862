//! What an agent must carry over a restart, kept in files next to the admin socket and named by
//! node: the workloads enrolled at runtime (`meshd enroll`), so that a restarted agent enrolls
//! them again before it releases the previous run's links — no plaintext window — and the policy
//! applied at runtime (`meshd policy apply`), so that a restart never falls back to no policy.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Agent;
use crate::config::WorkloadConfig;

/// The workloads recorded in `path` (none if it is missing or unreadable).
pub fn load(path: &Path) -> Vec<WorkloadConfig> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "ignoring an unreadable workload state file");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// A policy applied at runtime: where it came from and its text.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub source: String,
    pub text: String,
}

/// The recorded runtime policy, if any. An unreadable record is an error: starting without it
/// would silently drop the policy.
pub fn load_policy(path: &Path) -> Result<Option<PolicyRecord>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "read the policy applied at runtime from {}: {e} (apply the policy again, or remove the file to start \
                 without it)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read the policy applied at runtime from {}: {e}", path.display())),
    }
}

fn save(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Agent {
    fn state_file(&self, what: &str) -> PathBuf {
        let socket = self.config.admin_socket();
        socket.parent().unwrap_or(Path::new("/run/meshd")).join(format!("{}-{what}.json", self.config.node))
    }

    pub(super) fn state_path(&self) -> PathBuf {
        self.state_file("workloads")
    }

    pub(super) fn policy_record_path(&self) -> PathBuf {
        self.state_file("policy")
    }

    /// Records the enrolled workloads (after every enroll and unenroll), and those the previous
    /// run had enrolled that could not be enrolled again (kept for the next start).
    pub(super) fn save_state(&self) {
        let mut workloads: Vec<WorkloadConfig> = self
            .workloads()
            .iter()
            .map(|w| WorkloadConfig {
                name: w.name.clone(),
                cgroup: w.cgroup.clone(),
                netns: w.netns.path().to_path_buf(),
                spiffe_id: w.spiffe_id.to_string(),
                labels: w.labels.clone(),
            })
            .collect();
        let pending: Vec<WorkloadConfig> =
            self.unrestored().iter().filter(|u| !workloads.iter().any(|w| w.name == u.name)).cloned().collect();
        workloads.extend(pending);
        let path = self.state_path();
        let written = serde_json::to_vec_pretty(&workloads).map_err(std::io::Error::from).and_then(|b| save(&path, &b));
        if let Err(e) = written {
            warn!(path = %path.display(), error = %e, "could not record the enrolled workloads");
        }
    }

    /// Records the policy applied at runtime; `None`: the configured policy file is in force.
    pub(super) fn record_policy(&self, record: Option<&PolicyRecord>) {
        let path = self.policy_record_path();
        let result = match record {
            Some(r) => serde_json::to_vec_pretty(r).map_err(std::io::Error::from).and_then(|b| save(&path, &b)),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            warn!(path = %path.display(), error = %e, "could not record the policy applied at runtime");
        }
    }

    /// Workloads the previous run had enrolled whose enrollment failed at this start (their
    /// cgroups still exist and stay closed).
    pub(super) fn unrestored(&self) -> std::sync::MutexGuard<'_, Vec<WorkloadConfig>> {
        self.unrestored.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
