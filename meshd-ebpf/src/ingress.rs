//! cgroup_skb/ingress on each enrolled workload's cgroup: strict and permissive mode. A new
//! plaintext TCP connection (a SYN without ACK) to a strict workload from outside the mesh is
//! dropped before it reaches the application's listener; a permissive workload lets it in and
//! it is counted. Always let in: the agent's inbound mesh port, connections from the workload's
//! own addresses (the agent delivers meshed flows from inside the pod's namespace), loopback,
//! packets carrying the agent's mark, and sources allowed for health checks.

use aya_ebpf::{helpers::bpf_skb_cgroup_id, programs::SkBuffContext};
use meshd_common::{
    maps::{WORKLOAD_FLAG_PERMISSIVE, WORKLOAD_FLAG_STRICT},
    Event, Reason, AGENT_SOCKET_MARK,
};

use crate::{
    maps::{bump_keyed, count_event, prefix_has_port, ENROLLED, PLAINTEXT, PLAIN_ALLOW_V4, PLAIN_ALLOW_V6},
    ALLOW, DENY,
};

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers: a strict workload does not parse past them, it drops.
const IPV6_EXT: [u8; 6] = [0, 43, 44, 50, 51, 60];

/// Source and destination addresses (16 bytes, IPv4 in the first 4) and the TCP header offset.
struct Packet {
    v4: bool,
    src: [u8; 16],
    dst: [u8; 16],
    tcp: usize,
}

pub fn try_ingress(ctx: &SkBuffContext) -> Result<i32, Reason> {
    let skb = ctx.skb.skb;
    // SAFETY: helper valid for cgroup_skb programs; the cgroup of the receiving socket.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: map value is plain data, copied out immediately.
    let Some(info) = (unsafe { ENROLLED.get(cgroup) }).copied() else {
        return Ok(ALLOW);
    };
    if info.flags & (WORKLOAD_FLAG_STRICT | WORKLOAD_FLAG_PERMISSIVE) == 0 {
        return Ok(ALLOW);
    }
    // SAFETY: readable context fields.
    let (protocol, mark) = unsafe { (u32::from(u16::from_be((*skb).protocol as u16)), (*skb).mark) };
    let packet = match protocol {
        ETH_P_IP => ipv4(ctx)?,
        ETH_P_IPV6 => match ipv6(ctx)? {
            Some(p) => p,
            None if info.flags & WORKLOAD_FLAG_STRICT != 0 => return Ok(DENY),
            None => return Ok(ALLOW),
        },
        _ => return Ok(ALLOW),
    };
    let Some(packet) = packet_if_tcp(packet) else { return Ok(ALLOW) };
    let flags: u8 = ctx.load(packet.tcp + 13).map_err(|_| Reason::IngressHeader)?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Ok(ALLOW);
    }
    let port = u16::from_be(ctx.load::<u16>(packet.tcp + 2).map_err(|_| Reason::IngressHeader)?);
    let loopback = if packet.v4 { packet.src[0] == 127 } else { packet.src == LOOPBACK6 };
    if port == info.inbound_port || packet.src == packet.dst || loopback || mark == AGENT_SOCKET_MARK {
        return Ok(ALLOW);
    }
    let allowed_source = if packet.v4 {
        prefix_has_port(&PLAIN_ALLOW_V4, [packet.src[0], packet.src[1], packet.src[2], packet.src[3]], port)
    } else {
        prefix_has_port(&PLAIN_ALLOW_V6, packet.src, port)
    };
    if allowed_source {
        count_event(Event::PlaintextAllowedSource);
        return Ok(ALLOW);
    }
    if info.flags & WORKLOAD_FLAG_STRICT != 0 {
        count_event(Event::PlaintextDropped);
        return Ok(DENY);
    }
    count_event(Event::PlaintextAccepted);
    bump_keyed(&PLAINTEXT, &info.workload_id);
    Ok(ALLOW)
}

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// `None` for packets that are not TCP (they are not connection attempts).
fn packet_if_tcp(p: (Packet, bool)) -> Option<Packet> {
    p.1.then_some(p.0)
}

fn ipv4(ctx: &SkBuffContext) -> Result<(Packet, bool), Reason> {
    let vihl: u8 = ctx.load(0).map_err(|_| Reason::IngressHeader)?;
    let proto: u8 = ctx.load(9).map_err(|_| Reason::IngressHeader)?;
    let src: [u8; 4] = ctx.load(12).map_err(|_| Reason::IngressHeader)?;
    let dst: [u8; 4] = ctx.load(16).map_err(|_| Reason::IngressHeader)?;
    let mut p = Packet { v4: true, src: [0; 16], dst: [0; 16], tcp: usize::from(vihl & 0x0f) * 4 };
    p.src[..4].copy_from_slice(&src);
    p.dst[..4].copy_from_slice(&dst);
    Ok((p, proto == IPPROTO_TCP))
}

/// `Ok(None)`: an extension header precedes the transport header.
fn ipv6(ctx: &SkBuffContext) -> Result<Option<(Packet, bool)>, Reason> {
    let next: u8 = ctx.load(6).map_err(|_| Reason::IngressHeader)?;
    if IPV6_EXT.contains(&next) {
        return Ok(None);
    }
    let src: [u8; 16] = ctx.load(8).map_err(|_| Reason::IngressHeader)?;
    let dst: [u8; 16] = ctx.load(24).map_err(|_| Reason::IngressHeader)?;
    Ok(Some((Packet { v4: false, src, dst, tcp: 40 }, next == IPPROTO_TCP)))
}
