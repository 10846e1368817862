//! cgroup v2 helpers: find the unified hierarchy (this machine has a hybrid layout with v2 at
//! `/sys/fs/cgroup/unified`, Kubernetes nodes usually have it at `/sys/fs/cgroup`), resolve a
//! workload's cgroup path, and read cgroup ids (the inode number of the cgroup directory, which
//! is what `bpf_get_current_cgroup_id()` returns).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no cgroup v2 hierarchy is mounted in this mount namespace (looked in /proc/self/mountinfo); mount one \
         with `mount -t cgroup2 none /sys/fs/cgroup/unified`, or set cgroup_root in the config. Under `ip netns \
         exec`, /sys is remounted without it: run meshd in the node's namespace with nsenter --net instead"
    )]
    NoCgroup2,
    #[error("cgroup {path} does not exist: create it first (mkdir under {root})")]
    Missing { path: PathBuf, root: PathBuf },
    #[error("{path} is not in a cgroup v2 hierarchy: give a path under {root}")]
    NotCgroup2 { path: PathBuf, root: PathBuf },
    #[error("read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("move process {pid} into cgroup {path}: {source}")]
    Join { pid: u32, path: PathBuf, source: std::io::Error },
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    // Prefer the conventional locations when several are mounted.
    found.sort_by_key(|p| (p != Path::new("/sys/fs/cgroup"), p != Path::new("/sys/fs/cgroup/unified")));
    found.into_iter().next().ok_or(Error::NoCgroup2)
}

/// Resolves a configured cgroup path: absolute paths are taken as they are, relative ones are
/// relative to the cgroup v2 root. The directory must exist and be in the v2 hierarchy.
pub fn resolve(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    let full = if path.is_absolute() { path.to_path_buf() } else { root.join(path) };
    if !full.is_dir() {
        return Err(Error::Missing { path: full, root: root.into() });
    }
    let fs = statfs(&full).map_err(|e| Error::Io { path: full.clone(), source: e.into() })?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2 { path: full, root: root.into() });
    }
    Ok(full)
}

/// The cgroup id of a cgroup v2 directory.
pub fn cgroup_id(path: &Path) -> Result<u64, Error> {
    fs::metadata(path).map(|m| m.ino()).map_err(|source| Error::Io { path: path.into(), source })
}

/// The cgroup v2 directory this process belongs to.
pub fn own_cgroup(root: &Path) -> Result<PathBuf, Error> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or(Error::NoCgroup2)?.trim_start_matches('/');
    Ok(root.join(rel))
}

/// The ids of every cgroup under `root` (to tell which cgroups of an earlier run still exist).
pub fn existing_ids(root: &Path) -> std::collections::HashSet<u64> {
    fn walk(dir: &Path, depth: u32, out: &mut std::collections::HashSet<u64>) {
        if let Ok(meta) = fs::metadata(dir) {
            out.insert(meta.ino());
        }
        if depth == 0 {
            return;
        }
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), depth - 1, out);
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    walk(root, 32, &mut out);
    out
}

/// Moves process `pid` into the cgroup at `path`.
pub fn join(path: &Path, pid: u32) -> Result<(), Error> {
    fs::write(path.join("cgroup.procs"), pid.to_string()).map_err(|source| Error::Join {
        pid,
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_the_root() {
        let root = Path::new("/nonexistent-root");
        let err = resolve(root, Path::new("pods/a")).unwrap_err();
        assert!(matches!(err, Error::Missing { ref path, .. } if path == Path::new("/nonexistent-root/pods/a")));
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let dir = std::env::temp_dir();
        let err = resolve(Path::new("/sys/fs/cgroup"), &dir).unwrap_err();
        assert!(matches!(err, Error::NotCgroup2 { .. }), "{err}");
    }
}
