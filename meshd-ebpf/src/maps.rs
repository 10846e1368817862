//! The maps, shared by all programs, and the counter helpers.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use meshd_common::{
    Event, FlowKey, MeshedPorts, OrigDst, Reason, WorkloadInfo, ENROLLED_CAPACITY, ORIG_DST_CAPACITY, PREFIX_CAPACITY,
    SOCK_ORIG_CAPACITY,
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

/// Looks `port` up in an LPM trie of prefixes with port ranges.
#[inline(always)]
pub fn prefix_has_port<const N: usize>(trie: &LpmTrie<[u8; N], MeshedPorts>, addr: [u8; N], port: u16) -> bool {
    match trie.get(Key::new((N * 8) as u32, addr)) {
        Some(range) => range.port_lo <= port && port <= range.port_hi,
        None => false,
    }
}
