//! Map keys and values. Addresses are kept as the kernel keeps them: IPv4 in `addr[0]`, IPv6 in
//! all four words, each word holding network-order bytes in memory (read with `to_ne_bytes`).
//! Ports are host order unless a field says otherwise.

use core::mem::size_of;

/// Value of `ENROLLED` (key: cgroup v2 id, `u64`): an enrolled workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// The agent's numeric id of the workload (an index into its enrolled set).
    pub workload_id: u32,
    /// Port of the agent's capture listener in the workload's network namespace, on 127.0.0.1
    /// and ::1.
    pub capture_port: u16,
    /// Port of the agent's inbound mesh listener; never redirected.
    pub inbound_port: u16,
    /// `WORKLOAD_FLAG_*` bits.
    pub flags: u32,
    /// The workload's numeric identity (its SPIFFE ID's number in the policy maps).
    pub identity: u32,
}

/// Value of `SOCK_ORIG` (key: socket cookie, `u64`) and of `ORIG_DST`: where a redirected
/// connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
    /// The enrolled workload that made the connection.
    pub workload_id: u32,
}

/// Key of `ORIG_DST`: one redirected TCP connection as seen from the agent's accepting side.
/// `src` is the workload's end (the accepted socket's peer), `dst` the capture listener's end.
/// The network namespace cookie keeps equal 4-tuples of different namespaces apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub netns_cookie: u64,
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// Value of `MESHED_V4`/`MESHED_V6` (LPM tries keyed by prefix): the inclusive destination
/// port range of that prefix which is in the mesh. `EXCLUDED_V4/V6` use the same value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshedPorts {
    pub port_lo: u16,
    pub port_hi: u16,
}

/// `WorkloadInfo::flags`: the workload's IPv6 capture listener is up.
pub const WORKLOAD_FLAG_IPV6: u32 = 1;
/// `WorkloadInfo::flags`: strict mode — plaintext connections from outside the mesh are dropped.
pub const WORKLOAD_FLAG_STRICT: u32 = 2;
/// `WorkloadInfo::flags`: permissive mode — plaintext connections are let in and counted.
pub const WORKLOAD_FLAG_PERMISSIVE: u32 = 4;

/// Key of `IDENTITIES`: which numeric identity a meshed address belongs to, in one policy
/// generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub generation: u32,
    pub family: u16,
    pub _pad: u16,
    pub addr: [u32; 4],
}

/// Key of `POLICY`: the verdict for a source identity connecting to a destination identity on a
/// port (`port` 0: every port not listed on its own), in one policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub generation: u32,
    pub src: u32,
    pub dst: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of `DENIED`: denials at connect() by identity pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyKey {
    pub src: u32,
    pub dst: u32,
}

/// `POLICY` values.
pub const VERDICT_ALLOW: u32 = 1;
pub const VERDICT_DENY: u32 = 2;

const _: () = assert!(size_of::<WorkloadInfo>() == 16);
const _: () = assert!(size_of::<OrigDst>() == 24);
const _: () = assert!(size_of::<FlowKey>() == 48);
const _: () = assert!(size_of::<MeshedPorts>() == 4);
const _: () = assert!(size_of::<IdentityKey>() == 24);
const _: () = assert!(size_of::<PolicyKey>() == 16);
const _: () = assert!(size_of::<DenyKey>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers; any bit pattern
    // is a valid value.
    unsafe impl aya::Pod for super::WorkloadInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MeshedPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IdentityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyKey {}
}
