//! The pin folder `<bpffs>/meshd/<node>/{maps,links}`: maps are pinned so `bpftool` and
//! operators can inspect them; links are pinned so the programs stay attached if the agent dies
//! (a workload then fails closed — its redirected connections are refused — instead of going
//! out in plaintext). A restarted agent adopts the stale links and releases a cgroup's old links
//! only once it has attached its own to that cgroup, or once the cgroup is gone: there is no
//! moment with nothing attached to a workload that still exists.
//!
//! The folder is locked (`flock`) for the agent's lifetime: a second agent for the same node
//! name is refused instead of silently taking the first one's place.

use std::{
    collections::{BTreeMap, HashSet},
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
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
    /// The folder, `flock`ed while this agent runs.
    _lock: Arc<File>,
}

/// Links pinned by an earlier run of this node's agent, still attached, by cgroup id.
#[derive(Debug, Default)]
pub struct StaleLinks(BTreeMap<u64, Vec<PinnedLink>>);

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
        let lock = lock(&root, node)?;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let dir =
            Self { root, run: format!("{}-{}", std::process::id(), since_epoch.as_millis()), _lock: Arc::new(lock) };
        for path in dir.entries("maps")? {
            info!(pin = %path.display(), "replacing a map pin of an earlier run");
            fs::remove_file(&path).map_err(|source| Error::Io { op: "remove stale pin", path, source })?;
        }
        let mut stale = StaleLinks::default();
        for path in dir.entries("links")? {
            let cgroup_id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').next())
                .and_then(|id| id.parse::<u64>().ok());
            match (cgroup_id, PinnedLink::from_pin(&path)) {
                (Some(id), Ok(link)) => stale.0.entry(id).or_default().push(link),
                (None, _) => {
                    warn!(pin = %path.display(), "removing a link pin whose name carries no cgroup id");
                    fs::remove_file(&path).map_err(|source| Error::Io { op: "remove stale pin", path, source })?;
                }
                (_, Err(e)) => {
                    warn!(pin = %path.display(), error = %e, "removing unreadable stale link pin");
                    fs::remove_file(&path).map_err(|source| Error::Io { op: "remove stale pin", path, source })?;
                }
            }
        }
        if !stale.0.is_empty() {
            info!(cgroups = stale.0.len(), "adopted links of an earlier run; released once this run has attached");
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
    /// Removes this run's map pins (a failed start: the maps die with the process).
    pub fn remove_maps(&self) -> Result<(), Error> {
        for path in self.entries("maps")? {
            fs::remove_file(&path).map_err(|source| Error::Io { op: "remove map pin", path, source })?;
        }
        Ok(())
    }

    pub fn remove_all(&self) -> Result<(), Error> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { op: "remove pin folder", path: self.root.clone(), source }),
        }
    }
}

impl StaleLinks {
    /// Cgroups with links of an earlier run.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unpins and drops one cgroup's old links, detaching the old programs from it.
    pub fn release_cgroup(&mut self, cgroup_id: u64) {
        for link in self.0.remove(&cgroup_id).unwrap_or_default() {
            if let Err(e) = link.unpin() {
                warn!(cgroup_id, error = %e, "could not unpin a stale link");
            }
        }
    }

    /// Releases the links of cgroups that no longer exist; keeps (pinned, so failing closed)
    /// those of cgroups that still exist but were not enrolled again, with a warning.
    pub fn release_gone(&mut self, existing: &HashSet<u64>) {
        let ids: Vec<u64> = self.0.keys().copied().collect();
        for id in ids {
            if existing.contains(&id) {
                warn!(
                    cgroup_id = id,
                    "a cgroup enrolled by an earlier run still exists but is not enrolled now: its \
                      interception stays attached (meshed connections fail closed) until it is enrolled again"
                );
            } else {
                self.release_cgroup(id);
            }
        }
    }

    /// Unpins every old link.
    pub fn release_all(&mut self) {
        let ids: Vec<u64> = self.0.keys().copied().collect();
        for id in ids {
            self.release_cgroup(id);
        }
    }
}

/// How long a starting agent waits for a predecessor that is still exiting (or for a forked
/// child that still holds the descriptor until its exec) to let go of the pin folder.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Locks the node's pin folder for this process's lifetime.
fn lock(root: &Path, node: &str) -> Result<File, Error> {
    let dir = File::open(root).map_err(|source| Error::Io { op: "open pin folder", path: root.into(), source })?;
    let start = Instant::now();
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    while unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if start.elapsed() >= LOCK_WAIT {
            return Err(Error::Precondition(format!(
                "another meshd agent is already running for node {node:?} (it holds {}): stop it first, or give \
                 this agent its own node name",
                root.display()
            )));
        }
        if start.elapsed() < POLL {
            info!(node, folder = %root.display(), "pin folder locked: waiting for the previous agent to exit");
        }
        std::thread::sleep(POLL);
    }
    Ok(dir)
}

const POLL: Duration = Duration::from_millis(50);

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
