//! Test helpers shared by the identity and TLS tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, empty directory whose name includes `label`.
    pub(crate) fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("meshd-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        Self(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM-encodes DER blocks with the given label (e.g. "CERTIFICATE", "PRIVATE KEY").
pub(crate) fn pem_encode<'a>(label: &str, blocks: impl IntoIterator<Item = &'a [u8]>) -> String {
    super::pem::encode(label, blocks)
}

/// The three PEM files of an identity directory.
pub(crate) struct SvidFiles {
    pub(crate) cert: String,
    pub(crate) key: String,
    pub(crate) bundle: String,
}

impl SvidFiles {
    /// PEM files for `svid`, trusting `roots`.
    pub(crate) fn new(svid: &super::Svid, roots: &[rustls_pki_types::CertificateDer<'_>]) -> Self {
        Self {
            cert: pem_encode("CERTIFICATE", svid.cert_chain.iter().map(|c| c.as_ref())),
            key: pem_encode("PRIVATE KEY", [svid.key.secret_der()]),
            bundle: pem_encode("CERTIFICATE", roots.iter().map(|c| c.as_ref())),
        }
    }
}

/// An identity directory updated the way Kubernetes atomic writers do: each generation in its
/// own `..<gen>` directory, published by renaming a new `..data` symlink over the old one;
/// `tls.crt`, `tls.key` and `ca.crt` are symlinks through `..data`.
pub(crate) struct KubeDir {
    dir: PathBuf,
    generation: u32,
}

impl KubeDir {
    /// Publishes `files` as the first generation in `dir`.
    pub(crate) fn create(dir: &Path, files: &SvidFiles) -> Self {
        let mut kube = Self { dir: dir.to_owned(), generation: 0 };
        kube.publish(files);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
        kube
    }

    /// Atomically replaces the published files, then removes the previous generation.
    pub(crate) fn publish(&mut self, files: &SvidFiles) {
        let old = self.dir.join(format!("..gen_{}", self.generation));
        self.generation += 1;
        let name = format!("..gen_{}", self.generation);
        let new = self.dir.join(&name);
        std::fs::create_dir(&new).expect("create generation dir");
        std::fs::write(new.join("tls.crt"), &files.cert).expect("write tls.crt");
        std::fs::write(new.join("tls.key"), &files.key).expect("write tls.key");
        std::fs::write(new.join("ca.crt"), &files.bundle).expect("write ca.crt");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("link ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        let _ = std::fs::remove_dir_all(old);
    }
}
