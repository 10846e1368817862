//! sockops: when a redirected connection is established, move its original destination from
//! the socket cookie (`SOCK_ORIG`) to the flow key the agent can compute from its accepted
//! socket (`ORIG_DST`), and ask for state callbacks so the entry goes when the socket closes.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockOpsContext,
    EbpfContext,
};
use meshd_common::{Event, FlowKey, Reason, AF_INET, AF_INET6};

use crate::maps::{count_event, ORIG_DST, SOCK_ORIG};

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;
const TCP_CLOSE: u32 = 7;
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

pub fn try_sockops(ctx: &SockOpsContext) -> Result<(), Reason> {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            if let Some(key) = flow_key(ctx) {
                if ORIG_DST.remove(&key).is_ok() {
                    count_event(Event::FlowRemoved);
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn established(ctx: &SockOpsContext) -> Result<(), Reason> {
    // SAFETY: helper valid for sock_ops contexts.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: map value is plain data; copied out immediately.
    let Some(orig) = (unsafe { SOCK_ORIG.get(cookie) }).copied() else {
        return Ok(()); // not a connection meshd redirected
    };
    let _ = SOCK_ORIG.remove(cookie);
    let Some(key) = flow_key(ctx) else {
        return Ok(());
    };
    ORIG_DST
        .insert(&key, &orig, 0)
        .map_err(|_| Reason::SockopsRecordFlow)?;
    count_event(Event::FlowRecorded);
    ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG)
        .map_err(|_| Reason::SockopsCbFlags)?;
    Ok(())
}

/// The flow key as the agent's accepting side sees it: `src` is this (the workload's) end.
#[inline(always)]
fn flow_key(ctx: &SockOpsContext) -> Option<FlowKey> {
    // SAFETY: helper valid for sock_ops contexts.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let src_port = ctx.local_port() as u16;
    // remote_port holds the network-order port shifted into the upper half (little endian).
    let dst_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    let mut key = FlowKey {
        netns_cookie,
        src_port,
        dst_port,
        ..FlowKey::default()
    };
    match ctx.family() {
        2 => {
            key.family = AF_INET;
            key.src_addr[0] = ctx.local_ip4();
            key.dst_addr[0] = ctx.remote_ip4();
        }
        10 => {
            let (local, remote) = (ctx.local_ip6(), ctx.remote_ip6());
            if local[0] == 0 && local[1] == 0 && local[2] == V4_MAPPED_WORD {
                key.family = AF_INET;
                key.src_addr[0] = local[3];
                key.dst_addr[0] = remote[3];
            } else {
                key.family = AF_INET6;
                key.src_addr = local;
                key.dst_addr = remote;
            }
        }
        _ => return None,
    }
    Some(key)
}
