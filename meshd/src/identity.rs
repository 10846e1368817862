//! Workload identities: SPIFFE IDs, X.509 SVIDs, trust bundles and where they come from.
//!
//! Layout:
//! - [`spiffe_id`]: [`SpiffeId`] and [`TrustDomain`] parsing.
//! - [`svid`]: [`Svid`] and [`TrustBundle`], plus [`CertInfo`] (what the agent reads from a
//!   certificate).
//! - [`ca`]: [`DevCa`], a file-backed development CA.
//! - [`source`]: the [`IdentitySource`] trait, implemented by [`CaSource`] (issues from a
//!   [`DevCa`]) and [`FileSource`] (reads what cert-manager's csi-driver-spiffe writes).

use std::path::PathBuf;

pub mod ca;
pub mod ca_source;
pub mod file_source;
mod pem;
pub mod source;
pub mod spiffe_id;
pub mod svid;
#[cfg(test)]
pub(crate) mod testutil;

pub use ca::DevCa;
pub use ca_source::{CaSource, CaSourceConfig};
pub use file_source::{FileSource, FileSourceConfig};
pub use pem::write_svid_dir;
pub use source::IdentitySource;
pub use spiffe_id::{SpiffeId, TrustDomain};
pub use svid::{CertInfo, Svid, TrustBundle};

/// Errors of the identity module. Each names the operation and the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string is not a valid workload SPIFFE ID.
    #[error("parse SPIFFE ID {input:?}: {reason}")]
    InvalidSpiffeId {
        /// The rejected input.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A string is not a valid trust domain name.
    #[error("parse trust domain {input:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected input.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Reading a file failed.
    #[error("read {what} {}: {source}", path.display())]
    Read {
        /// What the file holds, e.g. "SVID certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a file or creating a directory failed.
    #[error("write {what} {}: {source}", path.display())]
    Write {
        /// What the file holds, e.g. "CA private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's content is not what it should be (bad PEM, bad certificate, wrong identity...).
    #[error("load {what} {}: {reason}", path.display())]
    BadFile {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate (not tied to a file) could not be used.
    #[error("{op}: {reason}")]
    BadCertificate {
        /// The operation, e.g. "issue SVID for spiffe://td/a".
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// `DevCa::init` found an existing CA and was not told to overwrite it.
    #[error("initialize development CA in {}: ca.crt or ca.key already exists (pass --force to overwrite)", dir.display())]
    CaExists {
        /// The CA directory.
        dir: PathBuf,
    },
    /// Certificate generation failed.
    #[error("{op}: {source}")]
    Rcgen {
        /// The operation.
        op: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// An SVID was requested for an ID outside the issuer's trust domain.
    #[error("issue SVID for {id}: not in the CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// A source was asked for an identity it does not serve.
    #[error("get SVID for {id}: this identity source is not configured for it")]
    UnknownIdentity {
        /// The requested ID.
        id: SpiffeId,
    },
    /// A source was configured inconsistently.
    #[error("configure {what}: {reason}")]
    Config {
        /// Which source.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A source's background task needs a tokio runtime.
    #[error("start {what}: must be called from within a tokio runtime")]
    NoRuntime {
        /// Which source.
        what: &'static str,
    },
    /// Setting up a file watch failed.
    #[error("{target}: {source}")]
    Watch {
        /// The operation, e.g. "watch identity directory /x".
        target: String,
        /// The notify error.
        source: notify::Error,
    },
}

/// Spawns `task` on the current tokio runtime, or fails with [`Error::NoRuntime`].
fn spawn_background<F>(what: &'static str, task: F) -> Result<tokio::task::AbortHandle, Error>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime { what })?;
    Ok(handle.spawn(task).abort_handle())
}
