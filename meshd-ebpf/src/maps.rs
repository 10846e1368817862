//! The maps, shared by all programs, and the counter helpers.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use meshd_common::{
    DenyKey, Event, FlowKey, IdentityKey, MeshedPorts, OrigDst, PolicyKey, Reason, WorkloadInfo, DENIED_CAPACITY,
    ENROLLED_CAPACITY, IDENTITY_CAPACITY, ORIG_DST_CAPACITY, POLICY_CAPACITY, PREFIX_CAPACITY, SOCK_ORIG_CAPACITY,
};

/// cgroup v2 id → enrolled workload. Written by the agent.
#[map]
pub static ENROLLED: HashMap<u64, WorkloadInfo> = HashMap::with_max_entries(ENROLLED_CAPACITY, 0);

/// Meshed destination prefixes and their port ranges. Written by the agent.
#[map]
pub static MESHED_V4: LpmTrie<[u8; 4], MeshedPorts> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);
#[map]
pub static MESHED_V6: LpmTrie<[u8; 16], MeshedPorts> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

/// Destination prefixes (and port ranges) never redirected, even inside a meshed prefix.
#[map]
pub static EXCLUDED_V4: LpmTrie<[u8; 4], MeshedPorts> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);
#[map]
pub static EXCLUDED_V6: LpmTrie<[u8; 16], MeshedPorts> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

/// Socket cookie → original destination, from connect() until the connection is established.
/// LRU: a connect() that never completes is evicted, not leaked.
#[map]
pub static SOCK_ORIG: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(SOCK_ORIG_CAPACITY, 0);

/// Flow 4-tuple (+ netns cookie) → original destination, from establishment until close.
#[map]
pub static ORIG_DST: HashMap<FlowKey, OrigDst> = HashMap::with_max_entries(ORIG_DST_CAPACITY, 0);

/// The live policy generation (index 0; 0 = no policy loaded: everything meshed is allowed at
/// connect(), the destination agent still decides). The agent writes a new generation's
/// entries first and flips this last, so a swap is one atomic store.
#[map]
pub static POLICY_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Meshed address → numeric identity, per generation (the agent's view of who lives where).
#[map]
pub static IDENTITIES: HashMap<IdentityKey, u32> = HashMap::with_max_entries(IDENTITY_CAPACITY, 0);

/// (generation, source identity, destination identity, port) → `VERDICT_*`.
#[map]
pub static POLICY: HashMap<PolicyKey, u32> = HashMap::with_max_entries(POLICY_CAPACITY, 0);

/// Denials at connect() by identity pair.
#[map]
pub static DENIED: LruPerCpuHashMap<DenyKey, u64> = LruPerCpuHashMap::with_max_entries(DENIED_CAPACITY, 0);

/// Plaintext connections let into permissive workloads, by workload id.
#[map]
pub static PLAINTEXT: LruPerCpuHashMap<u32, u64> = LruPerCpuHashMap::with_max_entries(ENROLLED_CAPACITY, 0);

/// Sources allowed to open plaintext connections to strict workloads (health checks).
#[map]
pub static PLAIN_ALLOW_V4: LpmTrie<[u8; 4], MeshedPorts> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);
#[map]
pub static PLAIN_ALLOW_V6: LpmTrie<[u8; 16], MeshedPorts> = LpmTrie::with_max_entries(PREFIX_CAPACITY, 0);

/// Error counters by [`Reason`], and event counters by [`Event`].
#[map]
pub static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
#[map]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Event::COUNT, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; programs on one CPU do not
        // run concurrently with each other for the same slot.
        unsafe { *slot += 1 };
    }
}

/// Counts `reason` and returns `verdict`, so entry points stay one line.
#[inline(always)]
pub fn count_error<T>(reason: Reason, verdict: T) -> T {
    bump(&ERRORS, reason as u32);
    verdict
}

#[inline(always)]
pub fn count_event(event: Event) {
    bump(&EVENTS, event as u32);
}

/// Adds one to this CPU's slot of a per-CPU LRU hash entry, creating it at 1.
#[inline(always)]
pub fn bump_keyed<K>(map: &LruPerCpuHashMap<K, u64>, key: &K) {
    match map.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU map value.
        Some(slot) => unsafe { *slot += 1 },
        None => {
            let _ = map.insert(key, 1, 0);
        }
    }
}

/// Looks `port` up in an LPM trie of prefixes with port ranges.
#[inline(always)]
pub fn prefix_has_port<const N: usize>(trie: &LpmTrie<[u8; N], MeshedPorts>, addr: [u8; N], port: u16) -> bool {
    match trie.get(Key::new((N * 8) as u32, addr)) {
        Some(range) => range.port_lo <= port && port <= range.port_hi,
        None => false,
    }
}
