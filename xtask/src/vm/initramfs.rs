//! The guest's initramfs: static busybox, the (decompressed) modules needed to mount the host's
//! root over 9p with an overlay, and `init.sh` as `/init`. One small cached archive per kernel;
//! everything per run is passed on the kernel command line, so no per-run archive is needed.

use super::kernel::Kernel;
use super::{check_plain_path, cmd_stdout, fingerprint, run_cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";
/// Modules loaded by /init, with their dependencies (built-in ones are skipped).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Returns the kernel's base initramfs, building it if missing or outdated.
pub fn ensure(kernel: &Kernel) -> Result<PathBuf> {
    let kmoddir = fs::canonicalize(kernel.modules_dir())
        .with_context(|| format!("resolving {}", kernel.modules_dir().display()))?;
    let kmoddir = check_plain_path(&kmoddir)?.to_string();
    let init = INIT.replace("@KVER@", &kernel.release).replace("@KMODDIR@", &kmoddir);
    let key = fingerprint(&[init.as_bytes(), MODULES.join(" ").as_bytes()]);
    let dir = kernel.vmlinux.parent().context("kernel dir")?;
    let archive = dir.join(format!("initramfs-{key}.cpio"));
    if archive.is_file() {
        return Ok(archive);
    }
    let staging = dir.join(format!("initramfs.staging-{}", super::unique_suffix()));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(staging.join("bin")).with_context(|| format!("creating {}", staging.display()))?;
    fs::create_dir_all(staging.join("modules")).with_context(|| format!("creating {}", staging.display()))?;

    check_static(Path::new(BUSYBOX))?;
    fs::copy(BUSYBOX, staging.join("bin/busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    let mut order = String::new();
    for module in module_files(kernel)? {
        let name = decompress_module(&module, &staging.join("modules"))?;
        order.push_str(&name);
        order.push('\n');
    }
    fs::write(staging.join("modules.order"), order).context("writing modules.order")?;
    write_executable(&staging.join("init"), &init)?;

    let tmp = dir.join(format!("initramfs.cpio.tmp-{}", super::unique_suffix()));
    make_cpio(&staging, &tmp)?;
    fs::rename(&tmp, &archive).with_context(|| format!("renaming {} -> {}", tmp.display(), archive.display()))?;
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    Ok(archive)
}

/// The module files for [`MODULES`] and their dependencies, in load order, without repeats.
fn module_files(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new("modprobe");
    cmd.arg("-d").arg(&kernel.root).args(["-S", &kernel.release, "-a", "--show-depends"]).args(MODULES);
    let text = cmd_stdout(&mut cmd, &format!("resolving initramfs modules for {}", kernel.release))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("insmod"), Some(path)) = (words.next(), words.next()) {
            let path = PathBuf::from(path);
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Copies a module into `dest`, decompressing `.xz`/`.zst`/`.gz` (busybox insmod and older kernels
/// cannot load compressed modules). Returns the file name.
fn decompress_module(module: &Path, dest: &Path) -> Result<String> {
    let name = module.file_name().and_then(|n| n.to_str()).context("module file name")?;
    let (plain, tool): (&str, Option<&str>) = if let Some(n) = name.strip_suffix(".xz") {
        (n, Some("xz"))
    } else if let Some(n) = name.strip_suffix(".zst") {
        (n, Some("zstd"))
    } else if let Some(n) = name.strip_suffix(".gz") {
        (n, Some("gzip"))
    } else {
        (name, None)
    };
    let out = dest.join(plain);
    match tool {
        None => {
            fs::copy(module, &out).with_context(|| format!("copying {}", module.display()))?;
        }
        Some(tool) => {
            let file = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut cmd = Command::new(tool);
            cmd.args(["-dc", "-q"]).arg(module).stdout(file);
            run_cmd(&mut cmd, &format!("decompressing {}", module.display()))?;
        }
    }
    Ok(plain.to_string())
}

fn check_static(path: &Path) -> Result<()> {
    let data = fs::read(path).with_context(|| format!("reading {} (install busybox-static)", path.display()))?;
    let head = &data[..data.len().min(4096)];
    if head.windows(7).any(|w| w == b"ld-linu") {
        bail!("{} is dynamically linked; install busybox-static", path.display());
    }
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {}", path.display()))
}

/// `cpio -o -H newc` of everything under `dir`, owned by root.
fn make_cpio(dir: &Path, out: &Path) -> Result<()> {
    let mut names = Vec::new();
    collect(dir, Path::new(""), &mut names)?;
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("spawning cpio (install cpio)")?;
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    child.stdin.take().context("cpio stdin")?.write_all(list.as_bytes()).context("writing to cpio")?;
    let status = child.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio failed ({status}) building {}", out.display());
    }
    Ok(())
}

fn collect(base: &Path, rel: &Path, names: &mut Vec<String>) -> Result<()> {
    let dir = base.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        names.push(rel.to_string_lossy().into_owned());
        if entry.file_type().with_context(|| format!("stat {}", rel.display()))?.is_dir() {
            collect(base, &rel, names)?;
        }
    }
    Ok(())
}
