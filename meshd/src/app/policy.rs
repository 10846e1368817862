//! The authorization policy in the running agent: applying a new one atomically, keeping the
//! kernel's connect-time verdicts in step with enrolled workloads, cutting flows a new policy
//! denies.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
};

use meshd_common::{
    maps::{WORKLOAD_FLAG_IPV6, WORKLOAD_FLAG_PERMISSIVE, WORKLOAD_FLAG_STRICT},
    WorkloadInfo,
};
use serde_json::json;
use tracing::{info, warn};

use super::{Agent, Error};
use crate::{
    flows::Direction,
    identity::SpiffeId,
    policy::{
        compile::{compile, IdentityKey},
        Decision, Mode, Policy, Target,
    },
    workload::Workload,
};

/// The policy in force and the numbering of identities (stable for the agent's lifetime, so
/// numbers written into the kernel never change meaning).
#[derive(Default)]
pub struct PolicyState {
    current: RwLock<Arc<Policy>>,
    /// A policy was applied; before that the kernel has no verdicts (generation 0: every meshed
    /// connection proceeds and the destination agent decides).
    loaded: AtomicBool,
    /// Where the policy in force came from (a file, or what `meshd policy apply` named).
    source: RwLock<Option<String>>,
    numbers: Mutex<HashMap<IdentityKey, u32>>,
    /// Connect-time denials already exported, per (source, destination) number.
    exported: Mutex<HashMap<(u32, u32), u64>>,
}

impl PolicyState {
    pub fn number(&self, key: &IdentityKey) -> u32 {
        let mut numbers = self.numbers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = numbers.len() as u32 + 1;
        *numbers.entry(key.clone()).or_insert(next)
    }
}

impl PolicyState {
    /// The SPIFFE ID behind a number.
    fn identity_of(&self, n: u32) -> Option<SpiffeId> {
        let numbers = self.numbers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        numbers.iter().find(|(_, v)| **v == n).map(|((id, _), _)| id.clone())
    }
}

impl Agent {
    /// Exports the kernel's connect-time denial counters as `meshd_policy_denials_total`
    /// (side `source`), by identity pair.
    pub fn export_source_denials(&self) {
        let totals = match self.lock_datapath().as_mut() {
            Some(dp) => dp.maps().policy().denials(),
            None => return,
        };
        let mut exported = self.policy.exported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((src, dst), total) in totals {
            let seen = exported.entry((src, dst)).or_insert(0);
            if total > *seen {
                let name = |n| self.policy.identity_of(n).map_or_else(|| format!("identity-{n}"), |id| id.to_string());
                let side = crate::metrics::PolicySide::Source;
                self.metrics.policy_denied_n(side, "policy", &name(src), &name(dst), total - *seen);
                *seen = total;
            }
        }
    }

    pub fn policy_loaded(&self) -> bool {
        self.policy.loaded.load(Ordering::SeqCst)
    }

    pub fn policy_source(&self) -> Option<String> {
        self.policy.source.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn current_policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.current.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Reads and applies a policy file.
    pub fn apply_policy_file(&self, path: &Path) -> Result<serde_json::Value, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::PolicyRead { path: path.into(), source })?;
        self.apply_policy(&path.display().to_string(), &text)
    }

    /// Validates and applies a policy: a bad one is rejected whole and the previous one stays.
    pub fn apply_policy(&self, path: &str, text: &str) -> Result<serde_json::Value, Error> {
        let policy = Policy::parse(path, text, &self.trust_domain)?;
        let (generation, entries, deferred) = self.install(&policy)?;
        *self.policy.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
        self.policy.loaded.store(true, Ordering::SeqCst);
        *self.policy.source.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(path.to_string());
        let cut = self.cut_denied_flows();
        let p = self.current_policy();
        info!(
            path,
            generation,
            policies = p.policies.len(),
            endpoints = p.endpoints.len(),
            entries,
            deferred,
            flows_cut = cut,
            "authorization policy applied"
        );
        Ok(json!({
            "path": path, "generation": generation, "policies": p.policies.len(), "endpoints": p.endpoints.len(),
            "verdict_entries": entries, "deferred_pairs": deferred, "flows_cut": cut,
        }))
    }

    /// SIGHUP: re-applies the configured policy file; a bad file leaves the policy in force.
    pub fn reload_policy(&self) {
        match &self.config.policy {
            Some(path) => match self.apply_policy_file(path) {
                Ok(_) => {
                    self.record_policy(None);
                    info!(path = %path.display(), "policy reloaded")
                }
                Err(e) => warn!(error = %e, "policy reload failed; the previous policy stays in force"),
            },
            None => info!("SIGHUP: no policy file configured"),
        }
    }

    /// Recompiles the policy in force (the set of local workloads changed).
    pub fn reinstall_policy(&self) -> Result<(), Error> {
        if self.policy.loaded.load(Ordering::SeqCst) {
            self.install(&self.current_policy())?;
        }
        Ok(())
    }

    /// Writes the kernel's view of `policy`: a new verdict generation, plaintext sources, and
    /// each workload's strict/permissive flags. Returns (generation, entries, deferred pairs).
    fn install(&self, policy: &Policy) -> Result<(u32, usize, usize), Error> {
        let workloads = self.workloads();
        let sources: Vec<(u32, SpiffeId)> = workloads.iter().map(|w| (w.identity, w.spiffe_id.clone())).collect();
        let compiled = compile(policy, &sources, |k| self.policy.number(k));
        let mut guard = self.lock_datapath();
        let Some(dp) = guard.as_mut() else { return Ok((0, 0, 0)) };
        let generation = dp.maps().policy().install(&compiled)?;
        dp.maps().policy().set_plaintext_allow(&policy.plaintext_allow)?;
        for w in &workloads {
            dp.maps().enroll(w.cgroup_id, self.workload_info(w, Some(policy)))?;
        }
        Ok((generation, compiled.verdicts.len(), compiled.deferred_pairs))
    }

    /// The kernel's record of a workload under `policy` (the one in force when `None`).
    pub fn workload_info(&self, w: &Workload, policy: Option<&Policy>) -> WorkloadInfo {
        WorkloadInfo {
            workload_id: w.id,
            capture_port: self.config.ports.capture,
            inbound_port: self.config.ports.inbound,
            flags: self.workload_flags(w, policy),
            identity: w.identity,
        }
    }

    pub fn workload_flags(&self, w: &Workload, policy: Option<&Policy>) -> u32 {
        let current;
        let policy = match policy {
            Some(p) => p,
            None => {
                current = self.current_policy();
                &current
            }
        };
        let mode = match policy.mode(&w.spiffe_id) {
            Some(Mode::Strict) => WORKLOAD_FLAG_STRICT,
            Some(Mode::Permissive) => WORKLOAD_FLAG_PERMISSIVE,
            None => 0,
        };
        mode | if w.ipv6 { WORKLOAD_FLAG_IPV6 } else { 0 }
    }

    /// Cuts every live flow the policy in force denies, on whichever side this agent is.
    fn cut_denied_flows(&self) -> usize {
        let policy = self.current_policy();
        let mut cut = 0;
        for flow in self.flows.snapshot() {
            let (Some(peer), Ok(local)) = (flow.peer_identity.get(), SpiffeId::new(&flow.local_identity)) else {
                continue;
            };
            let Ok(peer) = SpiffeId::new(peer) else { continue };
            let port = flow.destination.port();
            let decision = match flow.direction {
                Direction::Inbound => {
                    let Some(w) = self.workloads().into_iter().find(|w| w.name == flow.workload) else { continue };
                    policy.decide(&peer, Target { spiffe_id: &w.spiffe_id, labels: &w.labels }, port)
                }
                Direction::Outbound => {
                    let labels = policy
                        .endpoints
                        .iter()
                        .find(|(addr, id, _)| *addr == flow.destination.ip() && *id == peer)
                        .map(|(_, _, l)| l.clone())
                        .unwrap_or_default();
                    policy.decide(&local, Target { spiffe_id: &peer, labels: &labels }, port)
                }
            };
            if let Decision::Deny(reason) = decision {
                warn!(target: "meshd::access", event = "cut", flow = flow.id, direction = ?flow.direction,
                      destination = %flow.destination, reason = %reason, "live flow cut: the new policy denies it");
                flow.cut(reason);
                cut += 1;
            }
        }
        cut
    }
}
