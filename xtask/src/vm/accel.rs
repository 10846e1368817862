//! Choosing qemu's accelerator: KVM only where a probe boot under KVM really works (on this
//! machine `/dev/kvm` exists but fails), else TCG. The verdict is cached in `target/vm/accel.json`.

use super::kernel::Kernel;
use super::qemu::{boot, new_run_dir, VmRun};
use super::vm_dir;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator to use: `MESHD_VM_ACCEL` if set, else KVM only if a probe boot under KVM
/// succeeded on this host (verdict cached in `target/vm/accel.json`), else TCG.
pub fn accel(kernel: &Kernel) -> Result<Accel> {
    static VERDICT: std::sync::Mutex<Option<Accel>> = std::sync::Mutex::new(None);
    let mut verdict = VERDICT.lock().map_err(|_| anyhow::anyhow!("accel verdict lock poisoned"))?;
    if let Some(accel) = *verdict {
        return Ok(accel);
    }
    let accel = match std::env::var("MESHD_VM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        Ok(other) => bail!("MESHD_VM_ACCEL={other:?}: expected kvm or tcg"),
        Err(_) if !Path::new("/dev/kvm").exists() => Accel::Tcg,
        Err(_) => probe_kvm(kernel)?,
    };
    *verdict = Some(accel);
    Ok(accel)
}

fn probe_kvm(kernel: &Kernel) -> Result<Accel> {
    let cache = vm_dir()?.join("accel.json");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").context("reading the host release")?;
    let qemu = super::cmd_stdout(Command::new("qemu-system-x86_64").arg("--version"), "qemu-system-x86_64 --version")?;
    let key = format!("{} / {}", host.trim(), qemu.lines().next().unwrap_or(""));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        let cached: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if cached["key"] == key.as_str() {
            return Ok(if cached["kvm"] == true { Accel::Kvm } else { Accel::Tcg });
        }
    }
    eprintln!("vm: probing KVM with a 20 s test boot (once per host; verdict goes to {})", cache.display());
    let mut probe = VmRun::new(kernel.clone(), &["true"]);
    probe.timeout = Duration::from_secs(20);
    probe.memory_mb = 256;
    let run_dir = new_run_dir()?;
    let result = boot(&probe, Accel::Kvm, &run_dir);
    std::fs::remove_dir_all(&run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
    let (works, detail) = match &result {
        Ok(o) if o.exit_code == 0 => (true, format!("booted in {:.1?}", o.duration)),
        Ok(o) => (false, format!("exit code {}", o.exit_code)),
        Err(e) => (false, format!("{e:#}").lines().next().unwrap_or("").to_string()),
    };
    eprintln!(
        "vm: KVM {}: {}",
        if works { "works" } else { "does not work, using TCG" },
        detail.lines().next().unwrap_or("")
    );
    let json = serde_json::json!({ "key": key, "kvm": works, "detail": detail });
    std::fs::write(&cache, json.to_string()).with_context(|| format!("writing {}", cache.display()))?;
    Ok(if works { Accel::Kvm } else { Accel::Tcg })
}
