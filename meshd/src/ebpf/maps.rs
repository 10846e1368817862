//! Typed handles on the eBPF maps, and the conversions between socket addresses and the
//! kernel's representation in `meshd-common`.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    Ebpf,
};
use meshd_common::{map_names as names, Event, FlowKey, MeshedPorts, OrigDst, Reason, WorkloadInfo, AF_INET, AF_INET6};

pub use super::policy_maps::PolicyMaps;
use super::{pins::PinDir, Error};

/// A destination prefix with an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
    pub ports: (u16, u16),
}

/// Sums of the per-CPU counters, by reason and by event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub errors: Vec<(&'static str, u64)>,
    pub events: Vec<(&'static str, u64)>,
}

impl Counters {
    pub fn event(&self, e: Event) -> u64 {
        self.events.iter().find(|(l, _)| *l == e.label()).map_or(0, |(_, v)| *v)
    }
    pub fn error(&self, r: Reason) -> u64 {
        self.errors.iter().find(|(l, _)| *l == r.label()).map_or(0, |(_, v)| *v)
    }
}

pub struct Maps {
    enrolled: HashMap<MapData, u64, WorkloadInfo>,
    meshed_v4: LpmTrie<MapData, [u8; 4], MeshedPorts>,
    meshed_v6: LpmTrie<MapData, [u8; 16], MeshedPorts>,
    excluded_v4: LpmTrie<MapData, [u8; 4], MeshedPorts>,
    excluded_v6: LpmTrie<MapData, [u8; 16], MeshedPorts>,
    sock_orig: HashMap<MapData, u64, OrigDst>,
    orig_dst: HashMap<MapData, FlowKey, OrigDst>,
    errors: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    prefixes: HashSet<Prefix>,
    policy: PolicyMaps,
}

fn take(ebpf: &mut Ebpf, pins: &PinDir, name: &'static str) -> Result<Map, Error> {
    let map = ebpf.take_map(name).ok_or(Error::MissingMap { map: name })?;
    let path = pins.map_path(name);
    map.pin(&path).map_err(|e| Error::Pin { what: format!("map {name}"), path, detail: format!("{e:?}") })?;
    Ok(map)
}

macro_rules! typed {
    ($ebpf:expr, $pins:expr, $name:expr) => {
        take($ebpf, $pins, $name)?.try_into().map_err(|source| Error::Map { map: $name, source })?
    };
}

impl Maps {
    pub fn policy(&mut self) -> &mut PolicyMaps {
        &mut self.policy
    }

    /// Takes the maps out of the loaded object and pins them.
    pub fn take(ebpf: &mut Ebpf, pins: &PinDir) -> Result<Self, Error> {
        Ok(Self {
            enrolled: typed!(ebpf, pins, names::ENROLLED),
            meshed_v4: typed!(ebpf, pins, names::MESHED_V4),
            meshed_v6: typed!(ebpf, pins, names::MESHED_V6),
            excluded_v4: typed!(ebpf, pins, names::EXCLUDED_V4),
            excluded_v6: typed!(ebpf, pins, names::EXCLUDED_V6),
            sock_orig: typed!(ebpf, pins, names::SOCK_ORIG),
            orig_dst: typed!(ebpf, pins, names::ORIG_DST),
            errors: typed!(ebpf, pins, names::ERRORS),
            events: typed!(ebpf, pins, names::EVENTS),
            prefixes: HashSet::new(),
            policy: PolicyMaps {
                generation_map: typed!(ebpf, pins, names::POLICY_GEN),
                identities: typed!(ebpf, pins, names::IDENTITIES),
                verdicts: typed!(ebpf, pins, names::POLICY),
                denied: typed!(ebpf, pins, names::DENIED),
                plaintext: typed!(ebpf, pins, names::PLAINTEXT),
                allow_v4: typed!(ebpf, pins, names::PLAIN_ALLOW_V4),
                allow_v6: typed!(ebpf, pins, names::PLAIN_ALLOW_V6),
                generation: 0,
                written: (Vec::new(), Vec::new()),
                allowed: Vec::new(),
            },
        })
    }

    pub fn enroll(&mut self, cgroup_id: u64, info: WorkloadInfo) -> Result<(), Error> {
        self.enrolled.insert(cgroup_id, info, 0).map_err(|source| Error::Map { map: names::ENROLLED, source })
    }

    pub fn unenroll(&mut self, cgroup_id: u64) -> Result<(), Error> {
        match self.enrolled.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(Error::Map { map: names::ENROLLED, source }),
        }
    }

    /// Replaces the meshed and excluded prefixes: new entries are written before stale ones are
    /// removed, so a prefix present in both sets is never briefly missing.
    pub fn set_prefixes(&mut self, meshed: &[Prefix], excluded: &[Prefix]) -> Result<(), Error> {
        let tag = |p: &Prefix, ex: bool| (ex, *p);
        let new: HashSet<(bool, Prefix)> =
            meshed.iter().map(|p| tag(p, false)).chain(excluded.iter().map(|p| tag(p, true))).collect();
        for (ex, p) in &new {
            self.write_prefix(*ex, p, true)?;
        }
        let old: Vec<Prefix> = self.prefixes.drain().collect();
        for p in old {
            for ex in [false, true] {
                if !new.contains(&(ex, p)) {
                    self.write_prefix(ex, &p, false)?;
                }
            }
        }
        self.prefixes = new.into_iter().map(|(_, p)| p).collect();
        Ok(())
    }

    fn write_prefix(&mut self, excluded: bool, p: &Prefix, insert: bool) -> Result<(), Error> {
        let ports = MeshedPorts { port_lo: p.ports.0, port_hi: p.ports.1 };
        let len = u32::from(p.len);
        let (map, result) = match (p.addr, excluded) {
            (IpAddr::V4(a), false) => {
                (names::MESHED_V4, upsert(&mut self.meshed_v4, Key::new(len, a.octets()), ports, insert))
            }
            (IpAddr::V4(a), true) => {
                (names::EXCLUDED_V4, upsert(&mut self.excluded_v4, Key::new(len, a.octets()), ports, insert))
            }
            (IpAddr::V6(a), false) => {
                (names::MESHED_V6, upsert(&mut self.meshed_v6, Key::new(len, a.octets()), ports, insert))
            }
            (IpAddr::V6(a), true) => {
                (names::EXCLUDED_V6, upsert(&mut self.excluded_v6, Key::new(len, a.octets()), ports, insert))
            }
        };
        result.map_err(|source| Error::Map { map, source })
    }

    /// The original destination of a redirected flow, removed from the map (the agent owns the
    /// flow from here; sockops would otherwise remove it when the socket closes).
    pub fn take_orig_dst(&mut self, key: &FlowKey) -> Option<OrigDst> {
        let orig = self.orig_dst.get(key, 0).ok()?;
        let _ = self.orig_dst.remove(key);
        Some(orig)
    }

    pub fn peek_orig_dst(&self, key: &FlowKey) -> Option<OrigDst> {
        self.orig_dst.get(key, 0).ok()
    }

    /// Entries in `ORIG_DST` and `SOCK_ORIG` (for leak checks).
    pub fn flow_entries(&self) -> (usize, usize) {
        (self.orig_dst.keys().count(), self.sock_orig.keys().count())
    }

    pub fn counters(&self) -> Counters {
        let sum = |m: &PerCpuArray<MapData, u64>, i: u32| m.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        Counters {
            errors: Reason::ALL.iter().map(|r| (r.label(), sum(&self.errors, *r as u32))).collect(),
            events: Event::ALL.iter().map(|e| (e.label(), sum(&self.events, *e as u32))).collect(),
        }
    }
}

fn upsert<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, MeshedPorts>,
    key: Key<K>,
    ports: MeshedPorts,
    insert: bool,
) -> Result<(), aya::maps::MapError> {
    if insert {
        trie.insert(&key, ports, 0)
    } else {
        match trie.remove(&key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r,
        }
    }
}

/// The `ORIG_DST` key of a socket the agent accepted on a capture listener.
pub fn flow_key(netns_cookie: u64, peer: SocketAddr, local: SocketAddr) -> FlowKey {
    let (family, src_addr, dst_addr) = match (canonical_ip(peer.ip()), canonical_ip(local.ip())) {
        (IpAddr::V4(p), IpAddr::V4(l)) => (AF_INET, v4_words(p), v4_words(l)),
        (p, l) => (AF_INET6, v6_words(to_v6(p)), v6_words(to_v6(l))),
    };
    FlowKey { netns_cookie, src_addr, dst_addr, src_port: peer.port(), dst_port: local.port(), family, _pad: 0 }
}

/// The socket address an `OrigDst` describes.
pub fn orig_addr(orig: &OrigDst) -> SocketAddr {
    let ip = if orig.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(orig.addr[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in orig.addr.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    };
    SocketAddr::new(ip, orig.port)
}

pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn v4_words(ip: Ipv4Addr) -> [u32; 4] {
    [u32::from_ne_bytes(ip.octets()), 0, 0, 0]
}

fn v6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_flow_keys_hold_network_order_bytes() {
        let key = flow_key(7, "10.1.2.3:40000".parse().unwrap(), "127.0.0.1:15001".parse().unwrap());
        assert_eq!(key.family, AF_INET);
        assert_eq!(key.src_addr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(key.dst_addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((key.src_port, key.dst_port, key.netns_cookie), (40000, 15001, 7));
        assert_eq!(&key.src_addr[1..], &[0, 0, 0]);
    }

    #[test]
    fn v4_mapped_peers_are_ipv4_flows() {
        let a = flow_key(1, "[::ffff:10.0.0.1]:5".parse().unwrap(), "[::ffff:127.0.0.1]:6".parse().unwrap());
        let b = flow_key(1, "10.0.0.1:5".parse().unwrap(), "127.0.0.1:6".parse().unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn v6_keys_and_orig_addresses_round_trip() {
        let key = flow_key(1, "[fd00::1]:5".parse().unwrap(), "[::1]:6".parse().unwrap());
        assert_eq!(key.family, AF_INET6);
        let orig = OrigDst { addr: key.src_addr, port: 5, family: AF_INET6, workload_id: 0 };
        assert_eq!(orig_addr(&orig), "[fd00::1]:5".parse::<SocketAddr>().unwrap());
        let v4 =
            OrigDst { addr: [u32::from_ne_bytes([10, 9, 8, 7]), 0, 0, 0], port: 80, family: AF_INET, workload_id: 0 };
        assert_eq!(orig_addr(&v4), "10.9.8.7:80".parse::<SocketAddr>().unwrap());
    }
}
