//! Where SVIDs and trust bundles come from.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Error, SpiffeId, Svid, TrustBundle};

/// A provider of SVIDs and the trust bundle, read by the TLS layer at every handshake.
///
/// Implementations keep their material current on their own (renewal, file reloads) and must
/// answer quickly and without blocking on I/O: [`IdentitySource::svid`] is called from TLS
/// certificate resolvers and [`IdentitySource::bundle`] from certificate verifiers, both inside
/// handshakes. Implementations:
/// - [`super::CaSource`]: issues from a local development CA.
/// - [`super::FileSource`]: reads files written by cert-manager's csi-driver-spiffe.
///
/// The shape is meant to fit a SPIFFE Workload API source later (a client of the SPIRE agent's
/// `FetchX509SVID` stream): it would cache the streamed SVIDs and bundle, answer `svid` and
/// `bundle` from that cache, and bump `changes` on every stream update.
pub trait IdentitySource: Send + Sync + 'static {
    /// Current SVID for this identity (issuing or loading it if needed).
    fn svid(&self, id: &SpiffeId) -> Result<Arc<Svid>, Error>;
    /// Current trust bundle.
    fn bundle(&self) -> Arc<TrustBundle>;
    /// Bumped every time any SVID or the bundle changes (rotation); for metrics/logs.
    fn changes(&self) -> watch::Receiver<u64>;
    /// A workload was enrolled at runtime: sources that read per-identity material (files)
    /// start watching `dir` for it; sources that issue on demand need nothing.
    fn watch_identity(&self, id: &SpiffeId, dir: &std::path::Path) -> Result<(), Error> {
        let _ = (id, dir);
        Ok(())
    }
}
