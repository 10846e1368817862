//! cgroup/connect4 and cgroup/connect6: steer an enrolled workload's TCP connect() to a meshed
//! destination onto the agent's capture listener (127.0.0.1 / ::1 in the workload's own network
//! namespace), and record the original destination under the socket cookie.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    programs::SockAddrContext,
    EbpfContext,
};
use meshd_common::{
    Event, OrigDst, Reason, WorkloadInfo, AF_INET, AF_INET6, AGENT_SOCKET_MARK, ALWAYS_DIRECT_PORTS,
    MAX_CGROUP_ANCESTORS,
};

use crate::{
    maps::{count_event, prefix_has_port, ENROLLED, EXCLUDED_V4, EXCLUDED_V6, MESHED_V4, MESHED_V6, SOCK_ORIG},
    policy, ALLOW, DENY,
};

const SOCK_STREAM: u32 = 1;
/// 127.0.0.1 as the kernel stores it (network-order bytes).
const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// The third word of a v4-mapped IPv6 address (::ffff:a.b.c.d).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// ::1 as four network-order words.
const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// The enrolled workload owning the current task's cgroup, or one of its ancestors (containers
/// live in child cgroups of the pod's cgroup). Returned as a fully initialised value with a
/// found flag: an `Option` of a struct leaves its payload undefined on `None`, which LLVM may
/// then read into registers the verifier rejects as uninitialised.
#[inline(always)]
fn enrolled_workload() -> (bool, WorkloadInfo) {
    // SAFETY: helper without arguments, available to cgroup sock_addr programs.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map value is plain data; copied out immediately.
    if let Some(info) = unsafe { ENROLLED.get(own) } {
        return (true, *info);
    }
    let mut found = (false, WorkloadInfo::default());
    let mut level = 1;
    while level <= MAX_CGROUP_ANCESTORS {
        // SAFETY: helper taking a level; returns 0 above the task's depth.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == own {
            break;
        }
        // SAFETY: as above.
        if let Some(info) = unsafe { ENROLLED.get(id) } {
            found = (true, *info);
        }
        level += 1;
    }
    found
}

/// The verdict before any redirection: is this a TCP socket of an enrolled workload that the
/// agent did not create? Returns the workload, or `None` to leave the socket alone.
#[inline(always)]
fn workload_for(ctx: &SockAddrContext) -> Result<Option<WorkloadInfo>, Reason> {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run; fields are readable.
    let (sock_type, sk) = unsafe { ((*sa).type_, (*sa).__bindgen_anon_1.sk) };
    if sock_type != SOCK_STREAM {
        return Ok(None);
    }
    if sk.is_null() {
        return Err(Reason::ConnectNoSocket);
    }
    // SAFETY: non-null context socket; `mark` is readable in sock_addr programs.
    if unsafe { (*sk).mark } == AGENT_SOCKET_MARK {
        return Ok(None);
    }
    let (found, info) = enrolled_workload();
    Ok(found.then_some(info))
}

#[inline(always)]
fn port_is_excluded(port: u16, info: &WorkloadInfo) -> bool {
    port == 0 || port == info.capture_port || port == info.inbound_port || ALWAYS_DIRECT_PORTS.contains(&port)
}

/// Decides for an IPv4 destination (`ip` in network-order bytes): `true` to redirect.
#[inline(always)]
fn meshed_v4(ip: u32, port: u16, info: &WorkloadInfo) -> bool {
    let bytes = ip.to_ne_bytes();
    if bytes[0] == 127 || ip == 0 || port_is_excluded(port, info) || prefix_has_port(&EXCLUDED_V4, bytes, port) {
        count_event(Event::Excluded);
        return false;
    }
    if !prefix_has_port(&MESHED_V4, bytes, port) {
        count_event(Event::Direct);
        return false;
    }
    true
}

#[inline(always)]
fn record(ctx: &SockAddrContext, orig: &OrigDst) -> Result<(), Reason> {
    // SAFETY: helper valid for sock_addr contexts.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    SOCK_ORIG.insert(cookie, orig, 0).map_err(|_| Reason::ConnectRecordOrig)?;
    count_event(Event::Redirected);
    Ok(())
}

pub fn try_connect4(ctx: &SockAddrContext) -> Result<i32, Reason> {
    let Some(info) = workload_for(ctx)? else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    // SAFETY: valid context; user_port holds the port in network order in its low 16 bits.
    let (ip, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    if !meshed_v4(ip, port, &info) {
        return Ok(ALLOW);
    }
    if !policy::allowed(&info, AF_INET, [ip, 0, 0, 0], port) {
        return Ok(DENY);
    }
    let orig = OrigDst { addr: [ip, 0, 0, 0], port, family: AF_INET, workload_id: info.workload_id };
    record(ctx, &orig)?;
    // SAFETY: valid context; connect4 may rewrite user_ip4 and user_port.
    unsafe {
        (*sa).user_ip4 = LOOPBACK_V4;
        (*sa).user_port = u32::from(info.capture_port.to_be());
    }
    Ok(ALLOW)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<i32, Reason> {
    let Some(info) = workload_for(ctx)? else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    // SAFETY: valid context; user_ip6 is readable word by word in connect6.
    let (ip, port) = unsafe {
        (
            [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]],
            u16::from_be((*sa).user_port as u16),
        )
    };
    // A v4-mapped destination (::ffff:a.b.c.d) on a dual-stack socket is an IPv4 flow.
    if ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD {
        if !meshed_v4(ip[3], port, &info) {
            return Ok(ALLOW);
        }
        if !policy::allowed(&info, AF_INET, [ip[3], 0, 0, 0], port) {
            return Ok(DENY);
        }
        let orig = OrigDst { addr: [ip[3], 0, 0, 0], port, family: AF_INET, workload_id: info.workload_id };
        record(ctx, &orig)?;
        // SAFETY: valid context; connect6 may rewrite user_ip6 and user_port.
        unsafe {
            (*sa).user_ip6[3] = LOOPBACK_V4;
            (*sa).user_port = u32::from(info.capture_port.to_be());
        }
        return Ok(ALLOW);
    }
    let bytes = words_to_bytes(ip);
    let unspecified = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0;
    if unspecified || ip == LOOPBACK_V6 || port_is_excluded(port, &info) || prefix_has_port(&EXCLUDED_V6, bytes, port) {
        count_event(Event::Excluded);
        return Ok(ALLOW);
    }
    if !prefix_has_port(&MESHED_V6, bytes, port) {
        count_event(Event::Direct);
        return Ok(ALLOW);
    }
    if !policy::allowed(&info, AF_INET6, ip, port) {
        return Ok(DENY);
    }
    let orig = OrigDst { addr: ip, port, family: AF_INET6, workload_id: info.workload_id };
    record(ctx, &orig)?;
    // SAFETY: valid context; connect6 may rewrite user_ip6 and user_port.
    unsafe {
        (*sa).user_ip6[0] = LOOPBACK_V6[0];
        (*sa).user_ip6[1] = LOOPBACK_V6[1];
        (*sa).user_ip6[2] = LOOPBACK_V6[2];
        (*sa).user_ip6[3] = LOOPBACK_V6[3];
        (*sa).user_port = u32::from(info.capture_port.to_be());
    }
    Ok(ALLOW)
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}
