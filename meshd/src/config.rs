//! The agent's configuration file (YAML or TOML, chosen by extension), parsed strictly: unknown
//! fields are errors, and every error names the file and the field.
//!
//! ```yaml
//! node: node-a                       # names pins, admin socket, logs
//! trust_domain: cluster.local
//! ports: { capture: 15001, inbound: 15008 }
//! identity: { dev_ca: { dir: /var/lib/meshd/ca, svid_ttl: 1h } }   # or { files: { dir: … } }
//! admin: { http: "127.0.0.1:15020" }  # /metrics, /healthz, /readyz (the default; null: off)
//! otlp: { endpoint: "http://otel-collector:4318" }                  # trace export; off if absent
//! mesh:
//!   destinations: [ { cidr: 10.100.0.0/16, ports: "1-65535" } ]
//!   exclude: [ { cidr: 10.100.0.1/32 } ]
//! workloads:
//!   - { name: encoder, cgroup: pods/encoder, netns: /var/run/netns/encoder,
//!       spiffe_id: "spiffe://cluster.local/ns/media/sa/encoder" }
//! ```

mod types;
mod validate;

pub use validate::{check_spiffe_id, valid_name, NAME_RULE};

use std::path::{Path, PathBuf};

pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {field}: {message}")]
    Invalid { path: PathBuf, field: String, message: String },
    #[error("config {path}: unknown extension; use .yaml, .yml or .toml")]
    Extension { path: PathBuf },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let config = Self::parse(path, &text)?;
        config.validate().map_err(|(field, message)| Error::Invalid { path: path.into(), field, message })?;
        Ok(config)
    }

    /// Parses `text` in the format `path`'s extension names, without validating.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let parse_err = |message: String| Error::Parse { path: path.into(), message };
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string())),
            Some("toml") => toml::from_str(text).map_err(|e| parse_err(e.to_string())),
            _ => Err(Error::Extension { path: path.into() }),
        }
    }

    /// Path of the admin socket: the configured one, or `/run/meshd/<node>/admin.sock`.
    pub fn admin_socket(&self) -> PathBuf {
        self.admin.socket.clone().unwrap_or_else(|| default_admin_socket(&self.node))
    }
}

/// Where the agent of `node` listens for `meshd status`, `enroll`, … by default.
pub fn default_admin_socket(node: &str) -> PathBuf {
    PathBuf::from("/run/meshd").join(node).join("admin.sock")
}

#[cfg(test)]
mod tests;
