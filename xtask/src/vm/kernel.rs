//! Debian kernels for the VM tier: resolve on the mirror, download, extract, depmod, and pull the
//! uncompressed `vmlinux` out of the bzImage (qemu boots it through the PVH entry, much faster
//! than the bzImage's own decompressor under emulation). Cached under `target/vm/kernels/`.

use super::apt::{version_gt, Apt};
use super::{run_cmd, vm_dir};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The metapackage whose versions are compared across suites.
const META: &str = "linux-image-amd64";

/// Which kernel to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// Debian 12's own kernel (6.1; kTLS without rekey).
    Bookworm,
    /// The newest kernel on the mirror (any suite but experimental); kTLS rekey needs >= 6.14.
    Newest,
}

impl KernelChoice {
    pub fn name(self) -> &'static str {
        match self {
            KernelChoice::Bookworm => "bookworm",
            KernelChoice::Newest => "newest",
        }
    }

    fn accepts(self, suite: &str) -> bool {
        match self {
            KernelChoice::Bookworm => {
                matches!(suite, "bookworm" | "bookworm-updates" | "bookworm-security")
            }
            KernelChoice::Newest => true,
        }
    }
}

/// A kernel ready to boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    /// The choice it was resolved for (`bookworm`, `newest`).
    pub choice: String,
    /// The Debian suite it came from.
    pub suite: String,
    /// The Debian package version of `linux-image-amd64`.
    pub version: String,
    /// `uname -r` in the guest.
    pub release: String,
    /// The extracted packages (`lib/modules/<release>` is depmod'ed).
    pub root: PathBuf,
    /// The uncompressed kernel.
    pub vmlinux: PathBuf,
    /// The packages that were downloaded.
    pub packages: Vec<String>,
}

impl Kernel {
    /// (major, minor) parsed from the release, e.g. "7.3.4+deb13-amd64" -> (7, 3).
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut it = self.release.split(|c: char| !c.is_ascii_digit());
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }

    /// True if the kernel supports kTLS rekey (TLS 1.3 KeyUpdate), i.e. is >= 6.14.
    pub fn has_ktls_rekey(&self) -> bool {
        self.major_minor().is_some_and(|v| v >= (6, 14))
    }

    /// The modules dir of the guest release, `root/lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib").join("modules").join(&self.release)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("serializing kernel metadata")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Returns the kernel for `choice`, downloading it if needed. Once cached, no network is used
/// unless `refresh` is set; if the mirror is unreachable on refresh, the cached one is kept.
pub fn ensure(choice: KernelChoice, refresh: bool) -> Result<Kernel> {
    let kernels = match std::env::var_os("MESHD_VM_KERNELS") {
        Some(dir) => PathBuf::from(dir),
        None => vm_dir()?.join("kernels"),
    };
    std::fs::create_dir_all(&kernels).with_context(|| format!("creating {}", kernels.display()))?;
    let pointer = kernels.join(format!("{}.json", choice.name()));
    let cached: Option<Kernel> = read_json(&pointer).ok().filter(|k: &Kernel| k.vmlinux.is_file());
    if let (Some(k), false) = (&cached, refresh) {
        return Ok(k.clone());
    }
    let apt = Apt::new(&vm_dir()?.join("apt"))?;
    let resolved = apt.update().and_then(|()| newest_version(&apt, choice));
    let (version, suite) = match (resolved, cached) {
        (Ok(v), _) => v,
        (Err(e), Some(k)) => {
            eprintln!("vm: cannot refresh the {} kernel ({e:#}); keeping cached {}", choice.name(), k.version);
            return Ok(k);
        }
        (Err(e), None) => return Err(e.context(format!("resolving the {} kernel", choice.name()))),
    };
    let mut kernel = install(&apt, &kernels, &version, &suite)?;
    kernel.choice = choice.name().to_string();
    write_json(&pointer, &kernel)?;
    Ok(kernel)
}

/// The highest `linux-image-amd64` version among the suites `choice` accepts.
fn newest_version(apt: &Apt, choice: KernelChoice) -> Result<(String, String)> {
    let mut best: Option<(String, String)> = None;
    for (version, suite) in apt.madison(META)? {
        if !choice.accepts(&suite) {
            continue;
        }
        let better = match &best {
            Some((v, _)) => version_gt(&version, v)?,
            None => true,
        };
        if better {
            best = Some((version, suite));
        }
    }
    best.with_context(|| format!("no {META} for the {} choice in the private apt lists", choice.name()))
}

/// Downloads and prepares `linux-image-amd64=version` into `kernels/<version>/` (idempotent).
fn install(apt: &Apt, kernels: &Path, version: &str, suite: &str) -> Result<Kernel> {
    let dir = kernels.join(version);
    let meta = dir.join("kernel.json");
    if let Ok(kernel) = read_json::<Kernel>(&meta) {
        return Ok(kernel);
    }
    eprintln!("vm: fetching kernel {META}={version} from {suite}");
    let tmp = kernels.join(format!("{version}.partial-{}", super::unique_suffix()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let root = tmp.join("root");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let packages = apt.same_version_closure(META, version)?;
    let debs_dir = tmp.join("debs");
    let debs = apt.download(&packages, version, &debs_dir)?;
    for deb in &debs {
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-x").arg(deb).arg(&root);
        run_cmd(&mut cmd, &format!("extracting {}", deb.display()))?;
    }
    std::fs::remove_dir_all(&debs_dir).with_context(|| format!("removing {}", debs_dir.display()))?;

    // Newer packages install to usr/lib/modules; make lib/modules work for depmod -b and modprobe -d.
    if !root.join("lib").exists() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).context("linking root/lib -> usr/lib")?;
    }
    let release = single_subdir(&root.join("lib/modules"))?;
    let vmlinuz =
        [root.join("boot").join(format!("vmlinuz-{release}")), root.join("lib/modules").join(&release).join("vmlinuz")]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no vmlinuz for {release} in the packages {packages:?}"))?;
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(&root).arg(&release);
    run_cmd(&mut depmod, &format!("depmod -b {} {release}", root.display()))?;
    extract_vmlinux(&vmlinuz, &tmp.join("vmlinux"))?;

    let kernel = Kernel {
        choice: String::new(),
        suite: suite.to_string(),
        version: version.to_string(),
        release,
        root: dir.join("root"),
        vmlinux: dir.join("vmlinux"),
        packages,
    };
    write_json(&tmp.join("kernel.json"), &kernel)?;
    if let Ok(theirs) = read_json::<Kernel>(&meta) {
        // Another xtask finished the same kernel meanwhile: keep its copy (it may be in use).
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        return Ok(theirs);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing incomplete {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("renaming {} -> {}", tmp.display(), dir.display()))?;
    eprintln!("vm: kernel {} ({version}, {suite}) ready in {}", kernel.release, dir.display());
    Ok(kernel)
}

fn single_subdir(dir: &Path) -> Result<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected exactly one kernel release under {}, found {names:?}", dir.display()),
    }
}

/// Extracts the ELF `vmlinux` from a bzImage: the protected-mode payload (at `payload_offset`,
/// `payload_length` bytes, the last 4 of which are the decompressed size) is an xz/zstd/gzip/lz4
/// stream that the matching host tool decompresses.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let what = || format!("extracting vmlinux from {}", bzimage.display());
    let data = std::fs::read(bzimage).with_context(what)?;
    let u32_at = |off: usize| -> Result<usize> {
        let b = data.get(off..off + 4).with_context(|| format!("{}: truncated header", bzimage.display()))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!("{}: not a bzImage (no HdrS magic)", bzimage.display());
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    let payload = data
        .get(start..start + len.saturating_sub(4))
        .with_context(|| format!("{}: payload out of bounds", bzimage.display()))?;
    let tool: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        [0x02, 0x21, 0x4c, 0x18, ..] => &["lz4", "-dc"],
        _ => bail!("{}: unknown payload compression {:02x?}", bzimage.display(), &payload[..payload.len().min(6)]),
    };
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .with_context(|| format!("{}: spawning {}", what(), tool[0]))?;
    child.stdin.take().context("decompressor stdin")?.write_all(payload).with_context(what)?;
    let status = child.wait().with_context(what)?;
    if !status.success() {
        bail!("{}: {} failed ({status})", what(), tool[0]);
    }
    let mut head = [0u8; 4];
    std::fs::File::open(out)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .with_context(|| format!("reading {}", out.display()))?;
    if &head != b"\x7fELF" {
        bail!("{}: decompressed payload is not an ELF file", what());
    }
    Ok(())
}
