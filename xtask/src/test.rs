//! `cargo xtask test`: every tier, in order, each reported with its time —
//! 1. checks: formatting;
//! 2. unit: the pure logic (no privileges);
//! 3. privileged: the simulated-cluster tests on this machine's kernel (root; they fail, never
//!    skip, when a capability is missing);
//! 4. vm: the kernel-TLS tier inside Debian kernels booted under qemu.

use std::{process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{
    compile::{self, cargo, run_live},
    vm::workspace_root,
};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Run only these tiers (checks, unit, privileged, vm); all by default.
    #[arg(long = "tier", value_delimiter = ',')]
    tiers: Vec<String>,
    /// Threads for the privileged tests.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Passed to the privileged tests' harness as a name filter.
    #[arg(last = true)]
    filter: Vec<String>,
}

/// The privileged test files that run on this machine's kernel: every `tests/tests/*.rs` but
/// the VM tier's (`vm_*.rs`, which need kernel TLS).
fn host_tests() -> Result<Vec<String>> {
    let dir = workspace_root().join("tests/tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .filter(|n| !n.starts_with("vm_"))
        .collect();
    names.sort();
    Ok(names)
}

pub fn test(args: &TestArgs) -> Result<()> {
    let want = |tier: &str| args.tiers.is_empty() || args.tiers.iter().any(|t| t == tier);
    crate::setup::setup()?;
    let mut results: Vec<(&str, Result<()>, f64)> = Vec::new();
    let mut tier = |name: &'static str, f: &dyn Fn() -> Result<()>| {
        if want(name) {
            println!("\n==> tier {name}");
            let start = Instant::now();
            let r = f();
            results.push((name, r, start.elapsed().as_secs_f64()));
        }
    };
    tier("checks", &|| {
        run_live(
            Command::new(cargo()).current_dir(workspace_root()).args(["fmt", "--all", "--", "--check"]),
            "cargo fmt --check",
        )
    });
    let built = compile::build_all();
    if let Err(e) = built {
        bail!("build failed, no test ran: {e:#}");
    }
    tier("unit", &|| {
        run_live(
            Command::new(cargo())
                .current_dir(workspace_root())
                .env("MESHD_EBPF_OBJECT", compile::ebpf_object())
                .args(["test", "--no-fail-fast", "--workspace", "--exclude", "meshd-ebpf", "--lib", "--bins"]),
            "unit tests",
        )
    });
    tier("privileged", &|| {
        run_live(
            Command::new(cargo())
                .current_dir(workspace_root())
                .env("MESHD_EBPF_OBJECT", compile::ebpf_object())
                .env("MESHD_BIN_DIR", compile::bin_dir())
                .args(["test", "--no-fail-fast", "--package", "meshd-tests"])
                .args(host_tests()?.iter().flat_map(|t| ["--test", t.as_str()]))
                .arg("--")
                .arg(format!("--test-threads={}", args.threads))
                .args(&args.filter),
            "privileged tests",
        )
    });
    tier("vm", &|| crate::vm::tier::run_tier(false, &[]));
    println!("\n==> summary");
    let mut failed = Vec::new();
    for (name, r, secs) in &results {
        match r {
            Ok(()) => println!("  {name:<11} ok      {secs:>7.1} s"),
            Err(e) => {
                println!("  {name:<11} FAILED  {secs:>7.1} s  {e:#}");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("tiers failed: {}", failed.join(", "));
    }
    Ok(())
}
