//! `cargo xtask`: project automation. Each subcommand lives in its own module.

mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "meshd project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the test kernels under qemu and check the guest environment (kTLS, netns, bpffs, ffmpeg).
    VmTest(vm::smoke::VmTestArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::VmTest(args) => vm::smoke::vm_test(&args),
    }
}
