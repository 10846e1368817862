//! Validation: every error is `(field, message)`, the field written as a path into the file
//! (`workloads[2].spiffe_id`).

use std::{collections::HashSet, net::IpAddr};

use super::{Config, Destination, ParsedDestination};

type Invalid = (String, String);

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    (field.into(), message.into())
}

impl Config {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !valid_name(&self.node) {
            return Err(invalid("node", format!("must be {NAME_RULE}")));
        }
        if !valid_trust_domain(&self.trust_domain) {
            return Err(invalid("trust_domain", "must be a SPIFFE trust domain: lowercase a-z, 0-9, '.', '-', '_'"));
        }
        if self.ports.capture == 0 || self.ports.inbound == 0 || self.ports.capture == self.ports.inbound {
            return Err(invalid("ports", "capture and inbound must be two different non-zero ports"));
        }
        match (&self.identity.dev_ca, &self.identity.files) {
            (Some(ca), None) if ca.svid_ttl < std::time::Duration::from_secs(2) => {
                return Err(invalid(
                    "identity.dev_ca.svid_ttl",
                    "must be at least 2s (SVIDs renew at half their lifetime)",
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(invalid("identity", "set exactly one of dev_ca or files")),
        }
        if self.ktls_record_limit == Some(0) {
            return Err(invalid("ktls_record_limit", "must be at least 1 record"));
        }
        for (field, list) in [("mesh.destinations", &self.mesh.destinations), ("mesh.exclude", &self.mesh.exclude)] {
            let limit = meshd_common::PREFIX_CAPACITY as usize;
            for family in [true, false] {
                let n = list.iter().filter_map(|d| d.parse().ok()).filter(|d| d.addr.is_ipv4() == family).count();
                if n > limit {
                    return Err(invalid(
                        field,
                        format!("{n} IPv{} prefixes; the kernel map holds {limit}", if family { 4 } else { 6 }),
                    ));
                }
            }
        }
        for (i, d) in self.mesh.destinations.iter().enumerate() {
            d.parse().map_err(|m| invalid(format!("mesh.destinations[{i}]"), m))?;
        }
        for (i, d) in self.mesh.exclude.iter().enumerate() {
            d.parse().map_err(|m| invalid(format!("mesh.exclude[{i}]"), m))?;
        }
        let (mut names, mut cgroups) = (HashSet::new(), HashSet::new());
        for (i, w) in self.workloads.iter().enumerate() {
            let field = |f: &str| format!("workloads[{i}].{f}");
            if !valid_name(&w.name) {
                return Err(invalid(field("name"), format!("must be {NAME_RULE}")));
            }
            if !names.insert(&w.name) {
                return Err(invalid(field("name"), format!("{:?} is enrolled twice", w.name)));
            }
            if !cgroups.insert(&w.cgroup) {
                return Err(invalid(field("cgroup"), format!("{} is used by another workload", w.cgroup.display())));
            }
            if !w.netns.is_absolute() {
                return Err(invalid(field("netns"), "must be an absolute path, e.g. /var/run/netns/NAME"));
            }
            check_spiffe_id(&w.spiffe_id, &self.trust_domain).map_err(|m| invalid(field("spiffe_id"), m))?;
        }
        if let Some(o) = &self.otlp {
            if !o.endpoint.starts_with("http://") || o.endpoint.len() <= "http://".len() {
                return Err(invalid(
                    "otlp.endpoint",
                    "must be an http:// URL of an OTLP/HTTP collector, e.g. http://otel-collector:4318",
                ));
            }
            if o.export_interval.is_zero() {
                return Err(invalid("otlp.export_interval", "must be positive"));
            }
        }
        if self.admin.max_identity_pairs == Some(0) {
            return Err(invalid("admin.max_identity_pairs", "must be at least 1"));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid("idle_timeout", "must be positive; leave it out for no idle timeout"));
        }
        Ok(())
    }
}

/// Checks that `id` is a SPIFFE ID in `trust_domain`.
pub fn check_spiffe_id(id: &str, trust_domain: &str) -> Result<(), String> {
    let rest = id.strip_prefix("spiffe://").ok_or_else(|| format!("{id:?} is not a SPIFFE ID (spiffe://…)"))?;
    let (td, path) = rest.split_once('/').ok_or_else(|| format!("{id:?} has no path after the trust domain"))?;
    if td != trust_domain {
        return Err(format!("{id:?} is in trust domain {td:?}, not {trust_domain:?}"));
    }
    let ok_segment = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    };
    if !path.split('/').all(ok_segment) {
        return Err(format!("{id:?} has an invalid path: segments of A-Z, a-z, 0-9, '-', '.', '_'"));
    }
    Ok(())
}

/// What [`valid_name`] accepts, for error messages.
pub const NAME_RULE: &str = "1-63 characters of a-z, 0-9, '-', '_' or '.', not starting with '.'";

/// A node or workload name (it also names files and folders, so never `.` or `..`).
pub fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn valid_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
}

impl Destination {
    /// Parses the prefix and port range.
    pub fn parse(&self) -> Result<ParsedDestination, String> {
        let (addr, len) = match self.cidr.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (self.cidr.as_str(), None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{:?} is not an IP address or CIDR", self.cidr))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{:?}: prefix length must be 0-{max}", self.cidr))?,
        };
        if let IpAddr::V6(v6) = addr {
            if v6.to_ipv4_mapped().is_some() && len >= 96 {
                return Err(format!("{:?} is an IPv4-mapped IPv6 prefix: write it as IPv4", self.cidr));
            }
        }
        if masked(addr, len) != addr {
            return Err(format!("{:?} has host bits set; did you mean {}/{len}?", self.cidr, masked(addr, len)));
        }
        let ports = match &self.ports {
            None => (1, u16::MAX),
            Some(p) => parse_ports(p)?,
        };
        Ok(ParsedDestination { addr, len, ports })
    }
}

fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    let bad = || format!("ports {p:?}: expected a port (80) or an inclusive range (1000-2000) of 1-65535");
    let (lo, hi) = match p.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (p.trim(), p.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}
