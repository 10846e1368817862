//! The pin folder `<bpffs>/meshd/<node>/{maps,links}`: maps are pinned so `bpftool` and
//! operators can inspect them; links are pinned so the programs stay attached if the agent dies
//! (a workload then fails closed — its redirected connections are refused — instead of going
//! out in plaintext). A restarted agent adopts the stale links, attaches its own, and only then
//! releases the old ones, so there is no moment with nothing attached.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::links::PinnedLink;
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};
use tracing::{info, warn};

use super::Error;

/// The agent's pin folder.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
    /// Tells this run's link pins from an earlier run's, which are released separately.
    run: String,
}

/// Links pinned by an earlier run of this node's agent, still attached.
#[derive(Debug, Default)]
pub struct StaleLinks(Vec<PinnedLink>);

impl PinDir {
    /// Makes sure `bpffs` is a mounted BPF filesystem (mounting it if nothing is mounted
    /// there), creates the node's pin folder, removes stale map pins and adopts stale links.
    pub fn prepare(bpffs: &Path, node: &str) -> Result<(Self, StaleLinks), Error> {
        ensure_bpffs(bpffs)?;
        let root = bpffs.join("meshd").join(node);
        for sub in ["maps", "links"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|source| Error::Io { op: "create pin folder", path: dir, source })?;
        }
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let dir = Self { root, run: format!("{}-{}", std::process::id(), since_epoch.as_millis()) };
        for path in dir.entries("maps")? {
            warn!(pin = %path.display(), "removing stale map pin from an earlier run");
            fs::remove_file(&path).map_err(|source| Error::Io { op: "remove stale pin", path, source })?;
        }
        let mut stale = StaleLinks::default();
        for path in dir.entries("links")? {
            match PinnedLink::from_pin(&path) {
                Ok(link) => stale.0.push(link),
                Err(e) => {
                    warn!(pin = %path.display(), error = %e, "removing unreadable stale link pin");
                    fs::remove_file(&path).map_err(|source| Error::Io { op: "remove stale pin", path, source })?;
                }
            }
        }
        if !stale.0.is_empty() {
            info!(links = stale.0.len(), "adopted links of an earlier run; released once this run has attached");
        }
        Ok((dir, stale))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link_path(&self, cgroup_id: u64, program: &str) -> PathBuf {
        self.root.join("links").join(format!("{cgroup_id}-{program}-{}", self.run))
    }

    fn entries(&self, sub: &str) -> Result<Vec<PathBuf>, Error> {
        let dir = self.root.join(sub);
        let read =
            fs::read_dir(&dir).map_err(|source| Error::Io { op: "list pin folder", path: dir.clone(), source })?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|source| Error::Io { op: "list pin folder", path: dir.clone(), source })?;
            out.push(entry.path());
        }
        Ok(out)
    }

    /// Removes every pin and the folder (clean shutdown).
    pub fn remove_all(&self) -> Result<(), Error> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { op: "remove pin folder", path: self.root.clone(), source }),
        }
    }
}

impl StaleLinks {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unpins and drops the old links, detaching the old programs.
    pub fn release(self) {
        for link in self.0 {
            if let Err(e) = link.unpin() {
                warn!(error = %e, "could not unpin a stale link");
            }
        }
    }
}

fn ensure_bpffs(path: &Path) -> Result<(), Error> {
    if let Ok(fs) = statfs(path) {
        if fs.filesystem_type() == BPF_FS_MAGIC {
            return Ok(());
        }
    }
    fs::create_dir_all(path).map_err(|source| Error::Io {
        op: "create bpffs mount point",
        path: path.into(),
        source,
    })?;
    mount(Some("bpf"), path, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(|e| {
        Error::Precondition(format!(
            "{} is not a BPF filesystem and mounting one there failed ({e}): mount it with `mount -t bpf bpf {}`",
            path.display(),
            path.display()
        ))
    })?;
    info!(path = %path.display(), "mounted the BPF filesystem");
    Ok(())
}
