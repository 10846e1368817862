//! `cargo xtask setup`: installs, idempotently, what a fresh machine of this kind lacks — the
//! Debian packages the tests and the demo use, `rust-src` for the eBPF build, and bpf-linker
//! built against the Rust toolchain's own LLVM (see ../shared/PLATFORM.md for why).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::vm::{self, run_cmd};

/// Debian packages the privileged tests, the demo and the benchmarks use (the VM tier adds
/// `vm::VM_PACKAGES`).
const PACKAGES: &[&str] =
    &["iproute2", "ffmpeg", "tcpdump", "tshark", "python3", "procps", "prometheus", "python3-prometheus-client"];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    println!("setup: done");
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() -> Result<()> {
    let wanted: Vec<&str> = PACKAGES.iter().chain(vm::VM_PACKAGES).copied().collect();
    let mut missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    if !nix_is_root() {
        bail!("setup: missing Debian packages {} and not root: run `sudo cargo xtask setup`", missing.join(" "));
    }
    println!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )?;
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}

/// The sysroot of the toolchain that builds the eBPF object (the default one).
pub fn sysroot() -> Result<PathBuf> {
    let out = run_cmd(Command::new("rustc").args(["--print", "sysroot"]), "rustc --print sysroot")?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src() -> Result<()> {
    let lock = sysroot()?.join("lib/rustlib/src/rust/library/Cargo.lock");
    if lock.exists() {
        println!("setup: rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src (the eBPF build compiles core with -Z build-std)");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src"]), "rustup component add rust-src")?;
    Ok(())
}

/// The toolchain's shared LLVM library, e.g. `libLLVM.so.22.1-rust-1.95.0-stable`, and its
/// major version.
fn toolchain_llvm(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("list {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest.split('.').next().and_then(|m| m.parse().ok()).context("parse LLVM version")?;
            return Ok((lib.join(&name), major));
        }
    }
    bail!("no libLLVM.so.* in {}: this Rust toolchain does not ship LLVM as a shared library", lib.display())
}

fn bpf_linker_works(llvm: &Path) -> bool {
    let Ok(out) = Command::new("bpf-linker").arg("--version").output() else { return false };
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
        return false;
    }
    // It must be linked against an LLVM the loader can find, of the toolchain's version.
    let which = Command::new("sh").args(["-c", "ldd \"$(command -v bpf-linker)\""]).output();
    let want = llvm.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let major = want.split('.').nth(2).unwrap_or_default().to_string();
    which
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            !text.contains("not found")
                && text.lines().any(|l| l.contains("libLLVM.so.") && l.contains(&format!(".so.{major}.")))
        })
        .unwrap_or(false)
}

fn bpf_linker() -> Result<()> {
    let (llvm, major) = toolchain_llvm(&sysroot()?)?;
    if bpf_linker_works(&llvm) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present (LLVM {major})");
        return Ok(());
    }
    // bpf-linker must link the same LLVM as rustc: point LLVM_PREFIX at a folder whose lib/
    // holds the toolchain's libLLVM under its own name and as libLLVM.so.
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = home.join("meshd-llvm").join(format!("llvm-{major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
    for name in [llvm.file_name().context("LLVM file name")?.to_os_string(), "libLLVM.so".into()] {
        let link = lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("link {}", link.display()))?;
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against the toolchain's LLVM {major} (about a minute)");
    run_cmd(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")]),
        "cargo install bpf-linker",
    )?;
    if !bpf_linker_works(&llvm) {
        bail!("bpf-linker was built but does not run against {}", llvm.display());
    }
    Ok(())
}
