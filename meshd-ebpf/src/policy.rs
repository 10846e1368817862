//! The connect-time policy check: the verdict for (this workload's identity, the destination's
//! identity, port) in the live generation of the compiled policy.

use aya_ebpf::maps::Array;
use meshd_common::{maps::VERDICT_DENY, DenyKey, Event, IdentityKey, PolicyKey, WorkloadInfo};

use crate::maps::{bump_keyed, count_event, DENIED, IDENTITIES, POLICY, POLICY_GEN};

#[inline(always)]
fn generation(gen: &Array<u32>) -> u32 {
    gen.get(0).copied().unwrap_or(0)
}

/// `false` when the policy denies the connection. A destination without a known identity is
/// left to the destination agent, which authorizes every flow after the handshake.
#[inline(always)]
pub fn allowed(info: &WorkloadInfo, family: u16, addr: [u32; 4], port: u16) -> bool {
    let generation = generation(&POLICY_GEN);
    if generation == 0 {
        return true;
    }
    let ik = IdentityKey { generation, family, _pad: 0, addr };
    // SAFETY: map values are plain data, copied out immediately.
    let Some(dst) = (unsafe { IDENTITIES.get(&ik) }).copied() else {
        count_event(Event::PolicyDeferred);
        return true;
    };
    let mut key = PolicyKey { generation, src: info.identity, dst, port, _pad: 0 };
    // SAFETY: as above.
    let mut verdict = unsafe { POLICY.get(&key) }.copied();
    if verdict.is_none() {
        key.port = 0;
        // SAFETY: as above.
        verdict = unsafe { POLICY.get(&key) }.copied();
    }
    if verdict == Some(VERDICT_DENY) {
        count_event(Event::PolicyDenied);
        bump_keyed(&DENIED, &DenyKey { src: info.identity, dst });
        return false;
    }
    true
}
