//! Loads meshd's eBPF programs, pins their maps and links under `<bpffs>/meshd/<node>/`, attaches
//! them to cgroups, and gives the agent typed access to the maps.
//!
//! - [`object`]: the embedded eBPF object and the kernel/privilege checks done before loading.
//! - [`pins`]: the pin folder, bpffs mounting, stale pins of a crashed run.
//! - [`maps`]: typed map handles (enrolled workloads, meshed prefixes, original destinations,
//!   counters).
//! - [`datapath`]: [`Datapath`], which ties them together: load, enroll/unenroll a cgroup,
//!   attach the getsockopt program to the agent's own cgroup, detach on shutdown.

pub mod datapath;
pub mod maps;
pub mod object;
pub mod pins;
pub mod policy_maps;
pub mod sockopt;

use std::path::PathBuf;

pub use datapath::{Datapath, DatapathOptions};
pub use maps::{canonical_ip, flow_key, orig_addr, Counters, Prefix};
pub use sockopt::original_dst;

/// An error's message followed by its cause's (aya's map errors keep the errno in the cause).
fn with_cause(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Precondition(String),
    #[error(
        "this meshd binary was built without its eBPF object: run `cargo xtask build-ebpf` and \
         rebuild meshd (`cargo xtask build` does both), or pass --ebpf-object PATH"
    )]
    NoObject,
    #[error("read eBPF object {path}: {source}")]
    ReadObject { path: PathBuf, source: std::io::Error },
    #[error("parse and load eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {program} is missing from the object (stale build? run `cargo xtask build-ebpf`)")]
    MissingProgram { program: &'static str },
    #[error("eBPF map {map} is missing from the object (stale build? run `cargo xtask build-ebpf`)")]
    MissingMap { map: &'static str },
    #[error("load eBPF program {program} into the kernel: {source}")]
    Verifier { program: &'static str, source: aya::programs::ProgramError },
    #[error("attach eBPF program {program} to cgroup {cgroup}: {source}")]
    Attach { program: &'static str, cgroup: PathBuf, source: aya::programs::ProgramError },
    #[error("eBPF map {map}: {}", with_cause(source))]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("{what}: {count} entries do not fit the kernel map {map}, which holds {capacity} per policy generation")]
    Capacity { what: &'static str, map: &'static str, count: usize, capacity: usize },
    #[error("pin {what} at {path}: {detail}")]
    Pin { what: String, path: PathBuf, detail: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::Error),
    #[error("cgroup {cgroup} is not enrolled")]
    NotEnrolled { cgroup: PathBuf },
}
