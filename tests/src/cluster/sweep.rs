//! Removing a cluster, and sweeping what crashed runs left behind: every name carries the pid
//! of the process that made it (`mt<pid>-<n>`); names whose process is gone are removed.

use std::{fs, path::Path, process::Command, thread, time::Duration};

/// Removes every namespace, cgroup and pin folder of cluster `id`.
pub fn remove_cluster(id: &str, cgroup_dir: &Path) {
    kill_cgroup_tree(cgroup_dir);
    for ns in netns_names().into_iter().filter(|n| n.starts_with(&format!("{id}-"))) {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    for pins in [Path::new("/sys/fs/bpf/meshd")] {
        if let Ok(entries) = fs::read_dir(pins) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("{id}-")) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Sweeps leftovers of runs whose process is gone.
pub fn stale() {
    let dead = |name: &str| -> Option<String> {
        let rest = name.strip_prefix("mt")?;
        let (pid, _) = rest.split_once('-')?;
        let pid: i32 = pid.parse().ok()?;
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        (!alive).then(|| name.split('-').take(2).collect::<Vec<_>>().join("-"))
    };
    let mut ids: Vec<String> = netns_names().iter().filter_map(|n| dead(n)).collect();
    if let Ok(root) = meshd::cgroup::cgroup2_root() {
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_string_lossy().strip_prefix("meshd-").and_then(dead) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            eprintln!("sweeping leftovers of dead test cluster {id}");
            remove_cluster(&id, &root.join(format!("meshd-{id}")));
        }
    }
}

fn netns_names() -> Vec<String> {
    fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Kills every process in a cgroup subtree and removes the cgroups, deepest first.
pub fn kill_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let mut children: Vec<_> = fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
        .unwrap_or_default();
    children.sort();
    for child in children {
        kill_cgroup_tree(&child);
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove cgroup {}", dir.display());
}
