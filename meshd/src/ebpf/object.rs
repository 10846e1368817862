//! The eBPF object and the checks made before loading it, each failing with one line that says
//! what to do.

use std::{borrow::Cow, fs, path::Path};

use super::Error;

#[cfg(meshd_ebpf_embedded)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshd-ebpf.o"));
#[cfg(not(meshd_ebpf_embedded))]
static EMBEDDED: &[u8] = &[];

/// Oldest kernel meshd supports: `bpf_get_netns_cookie` in sock_ops and sockopt programs, and
/// `SO_NETNS_COOKIE`, arrived in 5.15.
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// The object bytes: from `path` when given, else the one built into this binary.
pub fn bytes(path: Option<&Path>) -> Result<Cow<'static, [u8]>, Error> {
    match path {
        Some(p) => fs::read(p).map(Cow::Owned).map_err(|source| Error::ReadObject { path: p.into(), source }),
        None if EMBEDDED.is_empty() => Err(Error::NoObject),
        None => Ok(Cow::Borrowed(EMBEDDED)),
    }
}

/// Fails unless this process may load and attach BPF programs and enter namespaces.
pub fn check_privileges() -> Result<(), Error> {
    // CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21), CAP_BPF (39).
    const NEEDED: [(u32, &str); 3] = [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"), (39, "CAP_BPF")];
    let status = fs::read_to_string("/proc/self/status").map_err(|source| Error::Io {
        op: "read",
        path: "/proc/self/status".into(),
        source,
    })?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = NEEDED.iter().filter(|(bit, _)| eff & (1 << bit) == 0).map(|(_, n)| *n).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Precondition(format!(
            "meshd lacks {}: run it as root (or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
            missing.join(", ")
        )))
    }
}

/// Fails unless the running kernel is at least [`MIN_KERNEL`].
pub fn check_kernel() -> Result<(), Error> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|source| Error::Io {
        op: "read",
        path: "/proc/sys/kernel/osrelease".into(),
        source,
    })?;
    match parse_release(&release) {
        Some(v) if v >= MIN_KERNEL => Ok(()),
        _ => Err(Error::Precondition(format!(
            "kernel {} is too old or unrecognised: meshd needs Linux {}.{} or newer",
            release.trim(),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        ))),
    }
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1147\n"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
    }
}
