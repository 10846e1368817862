//! Preconditions of privileged tests. A privileged test that cannot run fails with a message
//! saying what is missing; it never passes silently.

use std::path::Path;

/// Panics unless this process is root with the capabilities namespaces, cgroups and BPF need.
pub fn root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    // CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_BPF 39
    let needed = (1u64 << 12) | (1 << 21) | (1 << 39);
    assert!(
        nix::unistd::geteuid().is_root() && eff & needed == needed,
        "privileged test: needs root with CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF (CapEff={eff:#x}); run `sudo cargo xtask test`"
    );
}

/// Panics unless `program` is on PATH.
pub fn program(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "privileged test: `{program}` is not installed; run `cargo xtask setup` (Debian package {package})");
}

/// Panics unless `path` exists (a kernel interface).
pub fn path(path: &str, what: &str) {
    assert!(Path::new(path).exists(), "privileged test: {path} is missing: this kernel lacks {what}");
}
