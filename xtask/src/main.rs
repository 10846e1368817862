//! `cargo xtask`: project automation. Each subcommand lives in its own module.

mod bench;
mod compile;
mod demo;
mod setup;
mod test;
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
    /// Install what this machine lacks: Debian packages, rust-src, bpf-linker (idempotent).
    Setup,
    /// Build the eBPF object.
    BuildEbpf,
    /// Build the eBPF object, the agent and the test binaries.
    Build,
    /// Run every test tier: checks, unit, privileged (root), vm (kernel TLS under qemu).
    Test(test::TestArgs),
    /// Run the demo: FFmpeg streaming through the mesh between two simulated nodes (root).
    Demo {
        /// Arguments for the demo binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure what the mesh costs against a direct baseline in the same run (root; release build).
    Bench {
        /// Arguments for the benchmark binary (--bytes, --connections, --flows, --runs).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot the test kernels under qemu and check the guest environment (kTLS, netns, bpffs, ffmpeg).
    VmTest(vm::smoke::VmTestArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf => compile::build_ebpf(),
        Command::Build => compile::build_all(),
        Command::Test(args) => test::test(&args),
        Command::Demo { args } => demo::demo(&args),
        Command::Bench { args } => bench::bench(&args),
        Command::VmTest(args) => vm::smoke::vm_test(&args),
    }
}
