//! Types shared by meshd's eBPF programs (`meshd-ebpf`) and its agent (`meshd`).
//!
//! Every type here is `#[repr(C)]` with its padding spelled out and its size checked at compile
//! time, because the kernel and userspace must agree on the byte layout of every map key and value.
//! With the `user` feature the types implement `aya::Pod` so the agent can use them in aya maps.
#![no_std]

pub mod counters;
pub mod maps;

pub use counters::{Event, Reason};
pub use maps::{DenyKey, FlowKey, IdentityKey, MeshedPorts, OrigDst, PolicyKey, WorkloadInfo};

/// `AF_INET`, as stored in the `family` fields below.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as stored in the `family` fields below.
pub const AF_INET6: u16 = 10;

/// `SO_MARK` value the agent sets on every socket it creates. The connect programs never
/// redirect a socket carrying it, so the agent's own connections cannot loop back into it.
pub const AGENT_SOCKET_MARK: u32 = 0x6d65_7368; // "mesh"

/// Destination ports never redirected, whatever the meshed map says (DNS).
pub const ALWAYS_DIRECT_PORTS: [u16; 1] = [53];

/// Names of the maps in the eBPF object; the agent looks them up and pins them by these names.
pub mod map_names {
    pub const ENROLLED: &str = "ENROLLED";
    pub const MESHED_V4: &str = "MESHED_V4";
    pub const MESHED_V6: &str = "MESHED_V6";
    pub const EXCLUDED_V4: &str = "EXCLUDED_V4";
    pub const EXCLUDED_V6: &str = "EXCLUDED_V6";
    pub const SOCK_ORIG: &str = "SOCK_ORIG";
    pub const ORIG_DST: &str = "ORIG_DST";
    pub const ERRORS: &str = "ERRORS";
    pub const EVENTS: &str = "EVENTS";
    pub const POLICY_GEN: &str = "POLICY_GEN";
    pub const IDENTITIES: &str = "IDENTITIES";
    pub const POLICY: &str = "POLICY";
    pub const DENIED: &str = "DENIED";
    pub const PLAINTEXT: &str = "PLAINTEXT";
    pub const PLAIN_ALLOW_V4: &str = "PLAIN_ALLOW_V4";
    pub const PLAIN_ALLOW_V6: &str = "PLAIN_ALLOW_V6";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const CONNECT4: &str = "meshd_connect4";
    pub const CONNECT6: &str = "meshd_connect6";
    pub const SOCKOPS: &str = "meshd_sockops";
    pub const GETSOCKOPT: &str = "meshd_getsockopt";
    pub const INGRESS: &str = "meshd_ingress";
    pub const ALL: [&str; 5] = [CONNECT4, CONNECT6, SOCKOPS, GETSOCKOPT, INGRESS];
}

/// Capacity of the per-flow maps. `SOCK_ORIG` is an LRU map: an entry whose connect() never
/// completed is evicted rather than leaked. `ORIG_DST` entries are removed when the socket closes.
pub const SOCK_ORIG_CAPACITY: u32 = 65_536;
pub const ORIG_DST_CAPACITY: u32 = 65_536;
pub const ENROLLED_CAPACITY: u32 = 4_096;
pub const PREFIX_CAPACITY: u32 = 1_024;
/// Addresses with a known identity, per generation (two generations live during a swap).
pub const IDENTITY_CAPACITY: u32 = 65_536;
/// Verdict entries, per two generations.
pub const POLICY_CAPACITY: u32 = 262_144;
/// Identity pairs whose denials are counted (LRU).
pub const DENIED_CAPACITY: u32 = 4_096;
/// How many cgroup levels above the socket's own cgroup the connect programs search for an
/// enrolled workload (Kubernetes puts containers in child cgroups of the pod cgroup).
pub const MAX_CGROUP_ANCESTORS: u32 = 12;
