//! Compiles a policy into connect-time BPF entries for the workloads of one node (Cilium-style
//! numeric identities): for every (local source, known destination identity) pair, a verdict
//! for "any port" (`port` 0) and per-port exceptions.
//!
//! Ports are split into segments at every rule's range boundaries; within a segment every port
//! gets the same decision. The verdict covering most ports becomes the pair's port-0 entry and
//! the other segments become per-port entries — unless they add up to more than
//! [`MAX_EXCEPTION_PORTS`], in which case the pair gets no entry at all and the connection is
//! left to the destination agent (which decides every flow anyway).

use std::collections::{BTreeMap, BTreeSet};

use meshd_common::maps::{VERDICT_ALLOW, VERDICT_DENY};

use super::{Decision, Policy, Target};
use crate::identity::SpiffeId;

/// Most per-port entries one identity pair may take.
pub const MAX_EXCEPTION_PORTS: u32 = 4096;

/// A numeric identity's meaning: a SPIFFE ID with its labels.
pub type IdentityKey = (SpiffeId, BTreeMap<String, String>);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Meshed address → numeric identity of the endpoint living there.
    pub identities: Vec<(std::net::IpAddr, u32)>,
    /// (source, destination, port or 0, verdict).
    pub verdicts: Vec<(u32, u32, u16, u32)>,
    /// Pairs left to the destination agent (too many port exceptions).
    pub deferred_pairs: usize,
}

/// Compiles `policy` for `sources` (this node's workloads: number, SPIFFE ID). `number` gives
/// an identity its stable number.
pub fn compile(policy: &Policy, sources: &[(u32, SpiffeId)], mut number: impl FnMut(&IdentityKey) -> u32) -> Compiled {
    let mut out = Compiled::default();
    let mut destinations: BTreeMap<u32, IdentityKey> = BTreeMap::new();
    for (addr, id, labels) in &policy.endpoints {
        let key = (id.clone(), labels.clone());
        let n = number(&key);
        out.identities.push((*addr, n));
        destinations.insert(n, key);
    }
    for (dst_n, (dst_id, labels)) in &destinations {
        let dst = Target { spiffe_id: dst_id, labels };
        let segments = segments(policy, dst);
        for (src_n, src_id) in sources {
            let verdicts: Vec<(u16, u16, u32)> =
                segments.iter().map(|&(lo, hi)| (lo, hi, verdict(&policy.decide(src_id, dst, lo)))).collect();
            let ports_with =
                |v: u32| verdicts.iter().filter(|s| s.2 == v).map(|s| u32::from(s.1 - s.0) + 1).sum::<u32>();
            let default =
                if ports_with(VERDICT_DENY) > ports_with(VERDICT_ALLOW) { VERDICT_DENY } else { VERDICT_ALLOW };
            let exceptions: Vec<&(u16, u16, u32)> = verdicts.iter().filter(|s| s.2 != default).collect();
            if exceptions.iter().map(|s| u32::from(s.1 - s.0) + 1).sum::<u32>() > MAX_EXCEPTION_PORTS {
                out.deferred_pairs += 1;
                continue;
            }
            out.verdicts.push((*src_n, *dst_n, 0, default));
            for (lo, hi, v) in exceptions {
                for port in *lo..=*hi {
                    out.verdicts.push((*src_n, *dst_n, port, *v));
                }
            }
        }
    }
    out
}

fn verdict(d: &Decision) -> u32 {
    match d {
        Decision::Allow => VERDICT_ALLOW,
        Decision::Deny(_) => VERDICT_DENY,
    }
}

/// Port segments with no rule boundary inside, for the policies applying to `dst`.
fn segments(policy: &Policy, dst: Target<'_>) -> Vec<(u16, u16)> {
    let mut cuts: BTreeSet<u32> = [1u32, 65536].into();
    for p in policy.policies.iter().filter(|p| p.selects(dst)) {
        for r in &p.rules {
            for (lo, hi) in &r.ports {
                cuts.insert(u32::from(*lo));
                cuts.insert(u32::from(*hi) + 1);
            }
        }
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    cuts.windows(2).map(|w| (w[0] as u16, (w[1] - 1) as u16)).collect()
}
