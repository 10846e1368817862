//! cgroup/getsockopt, attached to the agent's own cgroup: answer `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6) for sockets the agent accepted on a capture listener, from
//! `ORIG_DST`, in the same `sockaddr_in`/`sockaddr_in6` form netfilter's REDIRECT answers with.

use core::ptr::write_volatile;

use aya_ebpf::{helpers::bpf_get_netns_cookie, programs::SockoptContext, EbpfContext};
use meshd_common::{Event, FlowKey, Reason, AF_INET, AF_INET6};

use crate::{
    maps::{count_event, ORIG_DST},
    ALLOW,
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

pub fn try_getsockopt(ctx: &SockoptContext) -> Result<i32, Reason> {
    let so = ctx.sockopt;
    // SAFETY: the context pointer is valid for the program's run.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return Ok(ALLOW);
    }
    // SAFETY: as above; `sk` is a readable context pointer field.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return Err(Reason::GetsockoptNoSocket);
    }
    // SAFETY: helper valid for sockopt contexts.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // The accepted socket's peer is the workload's end (`src` of the key), its local end the
    // capture listener (`dst`).
    // SAFETY: non-null context socket with readable address fields.
    let key = unsafe {
        let family = (*sk).family;
        let mut key = FlowKey {
            netns_cookie,
            src_port: u16::from_be((*sk).dst_port as u16),
            dst_port: (*sk).src_port as u16,
            ..FlowKey::default()
        };
        if family == u32::from(AF_INET) {
            key.family = AF_INET;
            key.src_addr[0] = (*sk).dst_ip4;
            key.dst_addr[0] = (*sk).src_ip4;
        } else {
            key.family = AF_INET6;
            key.src_addr = [
                (*sk).dst_ip6[0],
                (*sk).dst_ip6[1],
                (*sk).dst_ip6[2],
                (*sk).dst_ip6[3],
            ];
            key.dst_addr = [
                (*sk).src_ip6[0],
                (*sk).src_ip6[1],
                (*sk).src_ip6[2],
                (*sk).src_ip6[3],
            ];
        }
        key
    };
    // SAFETY: map value is plain data; copied out immediately.
    let Some(orig) = (unsafe { ORIG_DST.get(&key) }).copied() else {
        return Err(Reason::GetsockoptNotFound);
    };

    // SAFETY: the optval window [optval, optval_end) is the kernel's copy of the caller's
    // buffer; every write below is bounds-checked against optval_end first.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        let len = if orig.family == AF_INET {
            SOCKADDR_IN_LEN
        } else {
            SOCKADDR_IN6_LEN
        };
        if start.add(len) > end {
            return Err(Reason::GetsockoptShortBuffer);
        }
        let port = orig.port.to_be_bytes();
        if orig.family == AF_INET {
            let buf = &mut *(start as *mut [u8; SOCKADDR_IN_LEN]);
            *buf = [0; SOCKADDR_IN_LEN];
            buf[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            buf[2..4].copy_from_slice(&port);
            buf[4..8].copy_from_slice(&orig.addr[0].to_ne_bytes());
        } else {
            let buf = &mut *(start as *mut [u8; SOCKADDR_IN6_LEN]);
            *buf = [0; SOCKADDR_IN6_LEN];
            buf[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            buf[2..4].copy_from_slice(&port);
            // bytes 4..8: flowinfo (0); 8..24: address; 24..28: scope id (0)
            buf[8..12].copy_from_slice(&orig.addr[0].to_ne_bytes());
            buf[12..16].copy_from_slice(&orig.addr[1].to_ne_bytes());
            buf[16..20].copy_from_slice(&orig.addr[2].to_ne_bytes());
            buf[20..24].copy_from_slice(&orig.addr[3].to_ne_bytes());
        }
        // Two separate 4-byte stores: LLVM must not merge them into one 8-byte context write,
        // which the verifier rejects (see PLATFORM.md).
        write_volatile(&raw mut (*so).optlen, len as i32);
        write_volatile(&raw mut (*so).retval, 0);
    }
    count_event(Event::OrigDstAnswered);
    Ok(ALLOW)
}
