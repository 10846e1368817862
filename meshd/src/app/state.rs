//! The enrolled workloads, kept in a file next to the admin socket so that an agent restarted
//! after a crash or an upgrade enrolls again the workloads enrolled at runtime (`meshd enroll`)
//! before it releases the links of the previous run — no plaintext window.

use std::path::{Path, PathBuf};

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

fn save(path: &Path, workloads: &[WorkloadConfig]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(workloads)?)?;
    std::fs::rename(&tmp, path)
}

impl Agent {
    pub(super) fn state_path(&self) -> PathBuf {
        let socket = self.config.admin_socket();
        socket.parent().unwrap_or(Path::new("/run/meshd")).join("workloads.json")
    }

    /// Records the enrolled workloads (after every enroll and unenroll).
    pub(super) fn save_state(&self) {
        let workloads: Vec<WorkloadConfig> = self
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
        let path = self.state_path();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = save(&path, &workloads) {
            warn!(path = %path.display(), error = %e, "could not record the enrolled workloads");
        }
    }
}
