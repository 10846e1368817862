//! Reading and checking one identity directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{BUNDLE_FILE, CERT_FILE, DATA_LINK, KEY_FILE};
use crate::identity::{pem, Error, SpiffeId, Svid, TrustBundle, TrustDomain};

/// The raw bytes of one directory's files, as read together.
#[derive(PartialEq, Eq)]
pub(super) struct Snapshot {
    /// The directory the files were read from (the resolved `..data` target if any).
    pub(super) base: PathBuf,
    pub(super) cert: Vec<u8>,
    pub(super) key: Vec<u8>,
    pub(super) bundle: Vec<u8>,
}

/// A checked snapshot: the SVID and roots it holds.
pub(super) struct Loaded {
    pub(super) snapshot: Snapshot,
    pub(super) svid: Arc<Svid>,
    pub(super) roots: Vec<CertificateDer<'static>>,
}

/// Reads the three files of `dir` together, through `..data` when it exists.
pub(super) fn read_snapshot(dir: &Path) -> Result<Snapshot, Error> {
    let link = dir.join(DATA_LINK);
    let base = if link.symlink_metadata().is_ok() {
        link.canonicalize().map_err(|source| Error::Read { what: "identity data link", path: link.clone(), source })?
    } else {
        dir.to_owned()
    };
    Ok(Snapshot {
        cert: pem::read("SVID certificate", &base.join(CERT_FILE))?,
        key: pem::read("SVID private key", &base.join(KEY_FILE))?,
        bundle: pem::read("trust bundle", &base.join(BUNDLE_FILE))?,
        base,
    })
}

/// Parses and checks a snapshot for identity `id`.
pub(super) fn load(id: &SpiffeId, snapshot: Snapshot) -> Result<Loaded, Error> {
    let cert_path = snapshot.base.join(CERT_FILE);
    let key_path = snapshot.base.join(KEY_FILE);
    let chain = pem::certs("SVID certificate", &cert_path, &snapshot.cert)?;
    let key = pem::key("SVID private key", &key_path, &snapshot.key)?;
    let roots = pem::certs("trust bundle", &snapshot.base.join(BUNDLE_FILE), &snapshot.bundle)?;
    let bad_cert = |reason: String| Error::BadFile { what: "SVID certificate", path: cert_path.clone(), reason };
    let svid =
        Svid::from_parts(chain, key).map_err(|reason| bad_cert(format!("{reason} (key {})", key_path.display())))?;
    if &svid.spiffe_id != id {
        return Err(bad_cert(format!("holds SPIFFE ID {} but the directory is configured for {id}", svid.spiffe_id)));
    }
    if svid.not_after <= OffsetDateTime::now_utc() {
        return Err(bad_cert(format!("expired at {}", svid.not_after)));
    }
    Ok(Loaded { snapshot, svid: Arc::new(svid), roots })
}

/// The union of all directories' roots, in directory order, without duplicates.
pub(super) fn union_bundle(
    td: &TrustDomain,
    dirs: &[(SpiffeId, PathBuf)],
    loaded: &HashMap<SpiffeId, Loaded>,
) -> TrustBundle {
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    for loaded in dirs.iter().filter_map(|(id, _)| loaded.get(id)) {
        for root in &loaded.roots {
            if !roots.contains(root) {
                roots.push(root.clone());
            }
        }
    }
    TrustBundle { trust_domain: td.clone(), roots }
}
