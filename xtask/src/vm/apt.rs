//! A private apt configuration for fetching Debian kernels: its own sources list, lists dir and
//! download dir under `target/vm/apt/`. The system's apt sources and state are never touched.

use super::{cmd_stdout, run_cmd};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// Suites searched for kernels (experimental is left out: it carries release candidates).
const SUITES: &[(&str, &str)] = &[
    (MIRROR, "bookworm"),
    (MIRROR, "bookworm-updates"),
    (SECURITY, "bookworm-security"),
    (MIRROR, "bookworm-backports"),
    (MIRROR, "trixie"),
    (MIRROR, "trixie-updates"),
    (SECURITY, "trixie-security"),
    (MIRROR, "trixie-backports"),
    (MIRROR, "sid"),
];

pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Prepares `dir` (sources list, lists dir). Cheap; does not touch the network.
    pub fn new(dir: &Path) -> Result<Apt> {
        for sub in ["lists/partial", "cache"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mut sources = String::from("# written by cargo xtask (vm/apt.rs); private to the VM runner\n");
        for (uri, suite) in SUITES {
            sources.push_str(&format!("deb [signed-by={KEYRING} target=Packages] {uri} {suite} main\n"));
        }
        let list = dir.join("sources.list");
        std::fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        Ok(Apt { dir: dir.to_path_buf() })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for o in [
            opt("Dir::Etc::SourceList", &self.dir.join("sources.list")),
            "Dir::Etc::SourceParts=/dev/null".into(),
            opt("Dir::State::Lists", &self.dir.join("lists")),
            "Dir::Etc::Preferences=/dev/null".into(),
            "Dir::Etc::PreferencesParts=/dev/null".into(),
            // A binary cache makes each apt-cache call ~20 ms instead of ~3 s of list parsing.
            opt("Dir::Cache", &self.dir.join("cache")),
            "Dir::Cache::pkgcache=pkgcache.bin".into(),
            "Dir::Cache::srcpkgcache=".into(),
            "Acquire::Languages=none".into(),
            "APT::Sandbox::User=root".into(),
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    /// `apt-get update` against the private sources (once per process).
    pub fn update(&self) -> Result<()> {
        static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        let mut done = DONE.lock().map_err(|_| anyhow::anyhow!("apt update lock poisoned"))?;
        if *done {
            return Ok(());
        }
        let mut cmd = self.cmd("apt-get");
        cmd.args(["-q", "update"]);
        let out = run_cmd(&mut cmd, "apt-get update (private kernel sources)")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        // A suite that vanished from the mirror is not fatal; the choice below sees what is left.
        for line in text.lines().filter(|l| l.starts_with("E:") || l.starts_with("Err:") || l.starts_with("W:")) {
            eprintln!("vm: apt-get update (private kernel sources): {line}");
        }
        *done = true;
        Ok(())
    }

    /// Every (version, suite) in which `package` is offered.
    pub fn madison(&self, package: &str) -> Result<Vec<(String, String)>> {
        let mut cmd = self.cmd("apt-cache");
        cmd.args(["madison", package]);
        let text = cmd_stdout(&mut cmd, &format!("apt-cache madison {package}"))?;
        let mut found = Vec::new();
        for line in text.lines() {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            if cols.len() < 3 || cols[0] != package {
                continue;
            }
            let suite = cols[2].split_whitespace().nth(1).and_then(|s| s.split('/').next());
            if let Some(suite) = suite {
                found.push((cols[1].to_string(), suite.to_string()));
            }
        }
        Ok(found)
    }

    /// Names of the packages that `package=version` depends on with `(= version)`, recursively:
    /// for a kernel metapackage these are the image, binary, modules and base packages.
    pub fn same_version_closure(&self, package: &str, version: &str) -> Result<Vec<String>> {
        let mut todo = vec![package.to_string()];
        let mut seen: Vec<String> = Vec::new();
        while let Some(pkg) = todo.pop() {
            if seen.contains(&pkg) {
                continue;
            }
            let mut cmd = self.cmd("apt-cache");
            cmd.args(["show", "--no-all-versions", &format!("{pkg}={version}")]);
            let text = cmd_stdout(&mut cmd, &format!("apt-cache show {pkg}={version}"))?;
            let depends =
                text.lines().take_while(|l| !l.is_empty()).find_map(|l| l.strip_prefix("Depends:")).unwrap_or("");
            for alt in depends.split([',', '|']) {
                let alt = alt.trim();
                let name = alt.split([' ', '(', ':']).next().unwrap_or("");
                let pinned = alt.replace(' ', "").contains(&format!("(={version})"));
                if pinned && !name.is_empty() {
                    todo.push(name.to_string());
                }
            }
            seen.push(pkg);
        }
        Ok(seen)
    }

    /// `apt-get download name=version…` into `dest`; returns the .deb paths.
    pub fn download(&self, packages: &[String], version: &str, dest: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut cmd = self.cmd("apt-get");
        cmd.current_dir(dest).args(["-q", "download"]);
        cmd.args(packages.iter().map(|p| format!("{p}={version}")));
        run_cmd(&mut cmd, &format!("apt-get download {}", packages.join(" ")))?;
        let mut debs = Vec::new();
        for entry in std::fs::read_dir(dest).with_context(|| format!("listing {}", dest.display()))? {
            let path = entry.with_context(|| format!("listing {}", dest.display()))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let wanted = packages.iter().any(|p| name.starts_with(&format!("{p}_")));
            if wanted && name.ends_with(".deb") {
                debs.push(path);
            }
        }
        if debs.len() != packages.len() {
            bail!(
                "apt-get download: expected {} .deb files in {}, found {}",
                packages.len(),
                dest.display(),
                debs.len()
            );
        }
        Ok(debs)
    }
}

/// Debian version order (`dpkg --compare-versions a gt b`).
pub fn version_gt(a: &str, b: &str) -> Result<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .with_context(|| format!("dpkg --compare-versions {a} gt {b}"))?;
    Ok(status.success())
}
