//! `cargo xtask demo`: installs what is missing, builds, then runs the demo binary — FFmpeg
//! streaming MPEG-TS between two simulated nodes through the mesh — as root.

use std::process::Command;

use anyhow::Result;

use crate::compile::{self, run_live};

pub fn demo(args: &[String]) -> Result<()> {
    crate::setup::setup()?;
    compile::build_all()?;
    let bin = compile::bin_dir().join("demo");
    run_live(Command::new(&bin).env("MESHD_BIN_DIR", compile::bin_dir()).args(args), "the demo")
}
