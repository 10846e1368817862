//! meshd, the node agent.
//!
//! # Layout
//! - [`app`]: the running agent — start-up, enrollment, admin requests, shutdown.
//! - [`cgroup`], [`netns`]: the kernel objects a workload is made of.
//! - [`ebpf`]: loading, pinning and attaching the interception programs; typed maps.
//! - [`workload`]: enrolled workloads; [`flows`]: the live flow table.
//! - [`proxy`]: the data plane — outbound/inbound flows, the mesh header, the userspace and
//!   kernel TLS data paths.
//! - [`identity`]: SPIFFE IDs, SVIDs, the development CA, identity sources.
//! - [`tls`]: rustls configurations and SPIFFE verifiers.
//! - [`config`], [`cli`], [`admin`], [`status`]: how operators drive it; [`admin::http`]
//!   serves `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: Prometheus families (each part registers its own); [`telemetry`]: logging
//!   set-up and the optional OTLP trace export.

pub mod admin;
pub mod app;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod ebpf;
pub mod flows;
pub mod identity;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod proxy;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod workload;
