//! The compiled policy in the kernel: numeric identities of meshed addresses and verdicts,
//! both keyed by a generation. A swap writes the new generation's entries, then flips
//! `POLICY_GEN` (one atomic store: the programs see the old policy or the new one, never a
//! mixture or nothing), then deletes the old generation's entries.

use std::net::IpAddr;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuHashMap};
use meshd_common::{map_names as names, DenyKey, IdentityKey, MeshedPorts, PolicyKey, AF_INET, AF_INET6};

use super::Error;
use crate::policy::compile::Compiled;

pub struct PolicyMaps {
    pub(super) generation_map: Array<MapData, u32>,
    pub(super) identities: HashMap<MapData, IdentityKey, u32>,
    pub(super) verdicts: HashMap<MapData, PolicyKey, u32>,
    pub(super) denied: PerCpuHashMap<MapData, DenyKey, u64>,
    pub(super) plaintext: PerCpuHashMap<MapData, u32, u64>,
    pub(super) allow_v4: LpmTrie<MapData, [u8; 4], MeshedPorts>,
    pub(super) allow_v6: LpmTrie<MapData, [u8; 16], MeshedPorts>,
    pub(super) generation: u32,
    /// Keys written for the live generation, deleted after the next swap.
    pub(super) written: (Vec<IdentityKey>, Vec<PolicyKey>),
    pub(super) allowed: Vec<(IpAddr, u8)>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source }
}

fn identity_key(generation: u32, addr: IpAddr) -> IdentityKey {
    let (family, addr) = match crate::ebpf::canonical_ip(addr) {
        IpAddr::V4(a) => (AF_INET, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
        IpAddr::V6(a) => {
            let o = a.octets();
            (
                AF_INET6,
                std::array::from_fn(|i| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])),
            )
        }
    };
    IdentityKey { generation, family, _pad: 0, addr }
}

impl PolicyMaps {
    /// Installs a compiled policy as a new generation and retires the old one. Returns the
    /// new generation.
    pub fn install(&mut self, compiled: &Compiled) -> Result<u32, Error> {
        // Two generations share each map during a swap.
        let checks = [
            ("policy endpoints", names::IDENTITIES, compiled.identities.len(), meshd_common::IDENTITY_CAPACITY),
            ("policy verdicts", names::POLICY, compiled.verdicts.len(), meshd_common::POLICY_CAPACITY),
        ];
        for (what, map, count, capacity) in checks {
            let capacity = capacity as usize / 2;
            if count > capacity {
                return Err(Error::Capacity { what, map, count, capacity });
            }
        }
        let next = self.generation.wrapping_add(1).max(1);
        let mut written = (Vec::new(), Vec::new());
        let result = (|| {
            for (addr, n) in &compiled.identities {
                let key = identity_key(next, *addr);
                self.identities.insert(key, n, 0).map_err(map_err(names::IDENTITIES))?;
                written.0.push(key);
            }
            for (src, dst, port, verdict) in &compiled.verdicts {
                let key = PolicyKey { generation: next, src: *src, dst: *dst, port: *port, _pad: 0 };
                self.verdicts.insert(key, verdict, 0).map_err(map_err(names::POLICY))?;
                written.1.push(key);
            }
            self.generation_map.set(0, next, 0).map_err(map_err(names::POLICY_GEN))
        })();
        if let Err(e) = result {
            // The old generation stays live; clear what was half-written.
            Self::clear(&mut self.identities, &mut self.verdicts, &written);
            return Err(e);
        }
        let old = std::mem::replace(&mut self.written, written);
        Self::clear(&mut self.identities, &mut self.verdicts, &old);
        self.generation = next;
        Ok(next)
    }

    fn clear(
        identities: &mut HashMap<MapData, IdentityKey, u32>,
        verdicts: &mut HashMap<MapData, PolicyKey, u32>,
        keys: &(Vec<IdentityKey>, Vec<PolicyKey>),
    ) {
        for k in &keys.0 {
            let _ = identities.remove(k);
        }
        for k in &keys.1 {
            let _ = verdicts.remove(k);
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Replaces the sources allowed to reach strict workloads in plaintext.
    pub fn set_plaintext_allow(&mut self, prefixes: &[(IpAddr, u8)]) -> Result<(), Error> {
        let all = MeshedPorts { port_lo: 1, port_hi: u16::MAX };
        for (addr, len) in prefixes {
            match addr {
                IpAddr::V4(a) => self.allow_v4.insert(&Key::new(u32::from(*len), a.octets()), all, 0),
                IpAddr::V6(a) => self.allow_v6.insert(&Key::new(u32::from(*len), a.octets()), all, 0),
            }
            .map_err(map_err(names::PLAIN_ALLOW_V4))?;
        }
        for (addr, len) in std::mem::replace(&mut self.allowed, prefixes.to_vec()) {
            if prefixes.contains(&(addr, len)) {
                continue;
            }
            let _ = match addr {
                IpAddr::V4(a) => self.allow_v4.remove(&Key::new(u32::from(len), a.octets())),
                IpAddr::V6(a) => self.allow_v6.remove(&Key::new(u32::from(len), a.octets())),
            };
        }
        Ok(())
    }

    /// Connect-time denials by (source, destination) identity number.
    pub fn denials(&self) -> Vec<((u32, u32), u64)> {
        self.denied.iter().filter_map(Result::ok).map(|(k, v)| ((k.src, k.dst), v.iter().sum())).collect()
    }

    /// Plaintext connections let into permissive workloads, by workload id.
    pub fn plaintext(&self) -> Vec<(u32, u64)> {
        self.plaintext.iter().filter_map(Result::ok).map(|(k, v)| (k, v.iter().sum())).collect()
    }
}
