//! `cargo xtask bench`: builds optimised binaries and runs the benchmark (`tests/src/bin/bench.rs`)
//! on the simulated cluster: meshed against direct, as ratios measured in the same run.

use std::process::Command;

use anyhow::Result;

use crate::{
    compile::{self, cargo, run_live},
    vm::workspace_root,
};

pub fn bench(args: &[String]) -> Result<()> {
    crate::setup::setup()?;
    compile::build_ebpf()?;
    run_live(
        Command::new(cargo()).current_dir(workspace_root()).env("MESHD_EBPF_OBJECT", compile::ebpf_object()).args([
            "build",
            "--release",
            "--package",
            "meshd",
            "--package",
            "meshd-tests",
            "--bins",
        ]),
        "build the benchmark binaries (release)",
    )?;
    let bin = workspace_root().join("target/release");
    run_live(
        Command::new(bin.join("bench")).current_dir(workspace_root()).env("MESHD_BIN_DIR", &bin).args(args),
        "the benchmark",
    )
}
