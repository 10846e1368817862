//! meshd, the node agent.
//!
//! # Layout
//! - [`cgroup`], [`netns`]: the kernel objects a workload is made of.
//! - [`ebpf`]: loading, pinning and attaching the interception programs; typed maps.
pub mod cgroup;
pub mod config;
pub mod ebpf;
pub mod netns;
