//! The simulated cluster the demo, the privileged tests, the VM tier and the benchmarks stand on.
//!
//! # Layout
//! - [`cluster`]: nodes as network namespaces joined by veth through a "wire" namespace, pods as
//!   their own namespace + cgroup behind their node, a meshd agent per node; everything is
//!   removed when the [`cluster::Cluster`] is dropped (and stale leftovers of crashed runs are
//!   swept when the next one starts).
//! - [`require`]: privileged tests fail — never pass silently — when root or a kernel feature
//!   is missing.
//! - [`paths`]: where the built binaries are.
//! - [`media`]: FFmpeg senders and receivers in pods, frame-exact comparison (framemd5),
//!   searching captures for plaintext media; the media tests and `bin/demo.rs` use it.
//! - [`http`]: a GET inside a namespace (admin listener, Prometheus API); [`otlp`]: an
//!   in-process OTLP/HTTP trace receiver.
//! - `bin/testkit.rs`: a small TCP client/server used inside pods (identify-yourself servers,
//!   checksummed sources and sinks).

pub mod capture;
pub mod cluster;
pub mod http;
pub mod media;
pub mod otlp;
pub mod paths;
pub mod pattern;
pub mod policy_mesh;
pub mod procs;
pub mod require;

pub use cluster::{Agent, Cluster, Node, Pod};
