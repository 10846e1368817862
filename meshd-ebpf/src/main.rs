//! meshd's eBPF programs. Each entry point is one line: it calls `try_*`, which holds the logic
//! and returns a [`Reason`] on any error path; the entry point counts the reason in the per-CPU
//! `ERRORS` map and returns the program's fail-closed verdict.
//!
//! - `connect.rs`: cgroup/connect4 and cgroup/connect6 — redirect an enrolled workload's TCP
//!   connect() to a meshed destination onto the agent's capture listener, remember the original.
//! - `sockops.rs`: move the original destination from the socket cookie to the flow's 4-tuple
//!   once the connection is established, and forget it when the socket closes.
//! - `getsockopt.rs`: answer SO_ORIGINAL_DST for the agent's accepted sockets.
//! - `policy.rs`: the connect-time verdict from the compiled policy maps.
//! - `ingress.rs`: cgroup_skb ingress — strict and permissive mode.
#![no_std]
#![no_main]

mod connect;
mod getsockopt;
mod ingress;
mod maps;
mod policy;
mod sockops;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr, cgroup_sockopt, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext, SockoptContext},
};

use crate::maps::count_error;

/// Verdicts of cgroup programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn meshd_connect4(ctx: SockAddrContext) -> i32 {
    match connect::try_connect4(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => count_error(reason, DENY),
    }
}

#[cgroup_sock_addr(connect6)]
pub fn meshd_connect6(ctx: SockAddrContext) -> i32 {
    match connect::try_connect6(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => count_error(reason, DENY),
    }
}

#[sock_ops]
pub fn meshd_sockops(ctx: SockOpsContext) -> u32 {
    match sockops::try_sockops(&ctx) {
        Ok(()) => 1,
        Err(reason) => count_error(reason, 1),
    }
}

#[cgroup_sockopt(getsockopt)]
pub fn meshd_getsockopt(ctx: SockoptContext) -> i32 {
    match getsockopt::try_getsockopt(&ctx) {
        Ok(verdict) => verdict,
        // The syscall itself goes on with the kernel's own answer.
        Err(reason) => count_error(reason, ALLOW),
    }
}

#[cgroup_skb(ingress)]
pub fn meshd_ingress(ctx: SkBuffContext) -> i32 {
    match ingress::try_ingress(&ctx) {
        Ok(verdict) => verdict,
        // A packet whose headers cannot be read is not a connection attempt meshd can judge.
        Err(reason) => count_error(reason, ALLOW),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
