//! `cargo xtask build-ebpf` and `cargo xtask build`: the eBPF object (for `bpfel-unknown-none`,
//! with the default toolchain, `-Z build-std=core` enabled by RUSTC_BOOTSTRAP so no nightly is
//! needed), then the agent (which embeds it) and the test binaries.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::vm::workspace_root;

/// The built eBPF object.
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("target/bpfel-unknown-none/release/meshd-ebpf")
}

pub fn build_ebpf() -> Result<()> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root())
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--package", "meshd-ebpf", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"]);
    run_live(&mut cmd, "build the eBPF object (cargo build -p meshd-ebpf)")?;
    println!("build: eBPF object {}", ebpf_object().display());
    Ok(())
}

/// Builds the eBPF object, the agent, the test binaries and the test harnesses (debug profile).
pub fn build_all() -> Result<()> {
    build_ebpf()?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root()).env("MESHD_EBPF_OBJECT", ebpf_object()).args([
        "build",
        "--package",
        "meshd",
        "--package",
        "meshd-tests",
        "--bins",
        "--tests",
    ]);
    run_live(&mut cmd, "build meshd and the test binaries")?;
    Ok(())
}

/// The binaries' folder.
pub fn bin_dir() -> PathBuf {
    workspace_root().join("target/debug")
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command with the terminal attached (builds and tests show their progress); fails
/// with `what` when it fails.
pub fn run_live(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| anyhow::anyhow!("{what}: spawn {:?}: {e}", cmd.get_program()))?;
    if !status.success() {
        anyhow::bail!("{what}: failed ({status})");
    }
    Ok(())
}
