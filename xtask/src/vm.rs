//! VM runner: boots Debian kernels under qemu to test what this machine's kernel cannot (kTLS).
//!
//! # How it works
//! 1. [`kernel`] resolves a kernel package on the Debian mirror with a *private* apt configuration
//!    (own sources list and lists dir under `target/vm/apt/`; the system's apt setup is untouched),
//!    `apt-get download`s it, `dpkg-deb -x`s it, runs `depmod -b`, and extracts the uncompressed
//!    `vmlinux` from the bzImage payload so qemu can use the fast PVH entry (boots in ~2–3 s under TCG).
//! 2. [`initramfs`] builds a tiny cached initramfs per kernel: static busybox, the 9p/virtio/overlay
//!    modules (decompressed) and an `/init` that mounts the **host's `/` read-only over 9p**, puts a
//!    tmpfs overlay on top (so the guest root is writable and the guest kernel's modules can be
//!    bind-mounted at `/usr/lib/modules/<guest release>`), mounts proc, sys, devtmpfs, devpts, /tmp,
//!    /run, cgroup2 (`/sys/fs/cgroup`), bpffs (`/sys/fs/bpf`), tracefs, and a writable 9p share for
//!    results, then `switch_root`s into it. All host tools (ffmpeg, tcpdump, python3, bpftool, the
//!    project's binaries under `target/`) are therefore available in the guest at their host paths,
//!    and the kernel's on-demand `/sbin/modprobe` (e.g. for `tls`, `gcm(aes)`) finds the guest modules.
//! 3. [`qemu`] boots `qemu-system-x86_64 -M pc` with one vCPU, TCG unless KVM was proven to work
//!    ([`accel`]: a one-time probe boot, verdict cached in `target/vm/accel.json`). The guest command's stdout and
//!    stderr go to serial port ttyS1, its exit status to ttyS2 (`MESHD_VM_EXIT=<n>`), the kernel
//!    console to ttyS0. Files the guest writes under `$MESHD_VM_OUT` land in the host's out dir.
//!    Everything else the guest writes (even under `target/`) goes to the tmpfs overlay and is lost.
//!    The serial output moves ~270 KB/s under TCG: send bulk results through `$MESHD_VM_OUT`.
//!    Timings measured inside an emulated guest are not real-CPU numbers: compare only as ratios.
//!
//! # Cache layout (`target/vm/`)
//! - `apt/` — private `sources.list`, apt lists, downloaded `.deb`s (deleted after extraction).
//! - `kernels/<choice>.json` — which Debian package version a choice (`bookworm`, `newest`) resolved to.
//!   Once present, no network is needed; `cargo xtask vm-test --refresh` re-resolves from the mirror.
//!   `MESHD_VM_KERNELS=DIR` moves this kernels cache elsewhere (e.g. one that outlives a fresh
//!   CI clone; a cold fetch of both kernels takes ~40 s and ~650 MB).
//! - `kernels/<package version>/` — `root/` (extracted packages, depmod'ed), `vmlinux`,
//!   `kernel.json`, `initramfs-<hash>.cpio` (rebuilt when the init script changes).
//! - `accel.json` — KVM probe verdict for this host kernel and qemu.
//! - `run-N/` — one per running VM: `console.log`, `output.log`, `status.log`, `qemu.log`,
//!   `guest.sh`, `out/`. Removed after a successful run, kept after a failure.
//!
//! # Debugging a failing guest
//! - `MESHD_VM_KEEP=1` keeps every run dir; failures always keep theirs and print its path together
//!   with the last 60 lines of the console and of the command output.
//! - `MESHD_VM_CONSOLE=1` prints the whole guest console after each run.
//! - `MESHD_VM_LOGLEVEL=7` raises the guest kernel's console log level (default 4: warnings and up).
//! - `MESHD_VM_ACCEL=tcg|kvm` skips the KVM probe and forces an accelerator.
//! - `cargo xtask vm-test [--kernel newest] [--timeout S] -- CMD ARGS…` runs any command in the
//!   guest instead of the smoke check and prints its output, e.g. `-- sh -c 'dmesg | tail'`.
//! - Boot by hand: copy the `qemu-system-x86_64` line printed with `MESHD_VM_CONSOLE=1` (it is also
//!   in `run-N/qemu.cmd`).

pub mod accel;
mod apt;
pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod smoke;
pub mod tier;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Debian packages the VM tier needs on the host; `cargo xtask setup` installs them.
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "zstd",
    "bpftool",
    "iproute2",
    "ffmpeg",
    "tcpdump",
    "python3",
    "python3-cryptography",
    "debian-archive-keyring",
];

/// The workspace root (the directory above `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `target/vm/` under the workspace (created on demand).
pub fn vm_dir() -> Result<PathBuf> {
    let dir = workspace_root().join("target").join("vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A suffix that is unique within this machine for the life of this process (temporary dirs).
pub fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Runs a command to completion, failing with its stderr if it exits non-zero.
pub fn run_cmd(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("{what}: spawning {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{what}: {:?} failed ({}):\n{}", cmd, out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(out)
}

/// Like [`run_cmd`], returning stdout as text.
pub fn cmd_stdout(cmd: &mut Command, what: &str) -> Result<String> {
    let out = run_cmd(cmd, what)?;
    String::from_utf8(out.stdout).with_context(|| format!("{what}: output is not UTF-8"))
}

/// FNV-1a: a stable fingerprint for cache keys (not for security).
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xffu8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads a file as (lossy) text; a missing file reads as empty.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).replace('\r', "")).unwrap_or_default()
}

/// True when the environment variable is set to something other than empty/0.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// Paths handed to qemu options and the kernel command line must not need quoting.
pub fn check_plain_path(path: &Path) -> Result<&str> {
    let s = path.to_str().with_context(|| format!("path is not UTF-8: {}", path.display()))?;
    if s.chars().any(|c| c.is_whitespace() || c == ',' || c == '"' || c == '\'') {
        bail!("path {s:?} contains whitespace, a comma or a quote; the VM runner cannot pass it to qemu");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::kernel::Kernel;
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(fingerprint(&[b"a"]), fingerprint(&[b"a"]));
        assert_ne!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"ab"]));
        assert_eq!(tail("1\n2\n3\n", 2), "2\n3");
        assert!(check_plain_path(Path::new("/work/x y")).is_err());
        assert!(check_plain_path(Path::new("/work/a,b")).is_err());
        assert_eq!(check_plain_path(Path::new("/work/7.3.4-1~bpo13+1")).ok(), Some("/work/7.3.4-1~bpo13+1"));
    }

    #[test]
    fn kernel_versions() {
        let mut k = Kernel {
            choice: "newest".into(),
            suite: "trixie-backports".into(),
            version: "7.3.4-1~bpo13+1".into(),
            release: "7.3.4+deb13-amd64".into(),
            root: PathBuf::new(),
            vmlinux: PathBuf::new(),
            packages: Vec::new(),
        };
        assert_eq!(k.major_minor(), Some((7, 3)));
        assert!(k.has_ktls_rekey());
        k.release = "6.1.0-57-amd64".into();
        assert!(!k.has_ktls_rekey());
        k.release = "6.14.0-1-amd64".into();
        assert!(k.has_ktls_rekey());
    }
}
