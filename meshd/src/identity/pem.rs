//! Reading and writing the PEM files of CAs and SVIDs, with errors naming the file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Error;

/// Reads a whole file.
pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Read { what, path: path.to_owned(), source })
}

/// Parses every `CERTIFICATE` block of `pem` (read from `path`); there must be at least one.
pub(crate) fn certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |reason: String| Error::BadFile { what, path: path.to_owned(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// Parses the first private key block (PKCS#8, SEC1 or PKCS#1) of `pem` (read from `path`).
pub(crate) fn key(what: &'static str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::BadFile {
        what,
        path: path.to_owned(),
        reason: format!("no usable private key: {e}"),
    })
}

/// Writes `contents` to `path` with permission bits `mode`, replacing any existing file
/// only when `overwrite` is set.
pub(crate) fn write(what: &'static str, path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), Error> {
    let err = |source| Error::Write { what, path: path.to_owned(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(mode);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(err)?;
    // `mode` only applies to newly created files; enforce it on overwritten ones too.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

/// PEM-encodes DER blocks with the given label ("CERTIFICATE", "PRIVATE KEY").
pub(crate) fn encode<'a>(label: &str, blocks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let blocks: Vec<::pem::Pem> = blocks.into_iter().map(|der| ::pem::Pem::new(label, der.to_vec())).collect();
    ::pem::encode_many(&blocks)
}

/// Writes an SVID folder in the csi-driver-spiffe layout: `tls.crt` (leaf and chain),
/// `tls.key` (mode 0600) and `ca.crt` (the trust bundle), replacing existing files.
pub fn write_svid_dir(dir: &Path, svid: &super::Svid, bundle: &super::TrustBundle) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Write { what: "SVID folder", path: dir.to_owned(), source })?;
    let certs = encode("CERTIFICATE", svid.cert_chain.iter().map(|c| c.as_ref()));
    let key = encode("PRIVATE KEY", [svid.key.secret_der()]);
    let roots = encode("CERTIFICATE", bundle.roots.iter().map(|c| c.as_ref()));
    write("SVID certificate", &dir.join("tls.crt"), certs.as_bytes(), 0o644, true)?;
    write("SVID private key", &dir.join("tls.key"), key.as_bytes(), 0o600, true)?;
    write("trust bundle", &dir.join("ca.crt"), roots.as_bytes(), 0o644, true)
}
