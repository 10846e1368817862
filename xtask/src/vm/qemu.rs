//! Boots a kernel under qemu and runs one command in the guest (see the module doc of `vm`).

use super::accel::accel;
pub use super::accel::Accel;
use super::kernel::Kernel;
use super::{check_plain_path, env_flag, initramfs, read_lossy, tail, vm_dir, workspace_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One command to run in a fresh VM.
#[derive(Clone, Debug)]
pub struct VmRun {
    pub kernel: Kernel,
    /// argv; run from the workspace root in the guest (host paths work: the guest root is the host's).
    pub command: Vec<String>,
    /// Extra environment. The guest also gets `MESHD_VM=1` and `MESHD_VM_OUT=<out dir>`.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub memory_mb: u32,
    /// A host dir shared writable at the same path in the guest (`$MESHD_VM_OUT`). `None`: a
    /// scratch dir inside the run dir, discarded with it.
    pub out_dir: Option<PathBuf>,
}

impl VmRun {
    pub fn new(kernel: Kernel, command: &[&str]) -> VmRun {
        VmRun {
            kernel,
            command: command.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            timeout: Duration::from_secs(300),
            memory_mb: 1024,
            out_dir: None,
        }
    }
}

/// What came back from a guest that ran to completion.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// The command's exit status (128+N if killed by signal N).
    pub exit_code: i32,
    /// The guest kernel console (ttyS0).
    pub console: String,
    /// The command's stdout and stderr, interleaved (ttyS1).
    pub output: String,
    /// From qemu start to qemu exit.
    pub duration: Duration,
    /// The accelerator used.
    pub accel: Accel,
}

/// Boots `run.kernel`, runs `run.command`, and returns its outcome. A guest panic, a missing exit
/// code or a timeout is an error showing the end of the console and of the output.
pub fn run(run: &VmRun) -> Result<VmOutcome> {
    let accel = accel(&run.kernel)?;
    run_with(run, accel)
}

const SERIALS: [&str; 3] = ["console.log", "output.log", "status.log"];
const GUEST_PATH: &str = "/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// [`run`] with a given accelerator.
pub fn run_with(run: &VmRun, accel: Accel) -> Result<VmOutcome> {
    let run_dir = new_run_dir()?;
    let result = boot(run, accel, &run_dir);
    if result.is_ok() && !env_flag("MESHD_VM_KEEP") {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
    }
    result
}

pub(super) fn boot(run: &VmRun, accel: Accel, run_dir: &Path) -> Result<VmOutcome> {
    let initrd = initramfs::ensure(&run.kernel)?;
    let out_dir = match &run.out_dir {
        Some(dir) => dir.clone(),
        None => run_dir.join("out"),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out_dir = std::fs::canonicalize(&out_dir).with_context(|| format!("resolving {}", out_dir.display()))?;
    let run_s = check_plain_path(run_dir)?;
    let out_s = check_plain_path(&out_dir)?;
    let script = guest_script(run, out_s)?;
    let script_path = run_dir.join("guest.sh");
    std::fs::write(&script_path, script).with_context(|| format!("writing {}", script_path.display()))?;

    let loglevel = std::env::var("MESHD_VM_LOGLEVEL").unwrap_or_else(|_| "4".into());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "pc", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    match accel {
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
    };
    cmd.arg("-m").arg(run.memory_mb.to_string());
    cmd.arg("-kernel").arg(&run.kernel.vmlinux).arg("-initrd").arg(&initrd);
    cmd.arg("-append").arg(format!(
        "console=ttyS0 loglevel={loglevel} panic=-1 rdinit=/init cryptomgr.notests=1 \
         meshd.run={run_s} meshd.out={out_s} meshd.keep={}",
        hidden_in_guest(run, run_dir)?.join(",")
    ));
    for name in SERIALS {
        cmd.arg("-serial").arg(format!("file:{}/{name}", run_s));
    }
    cmd.arg("-virtfs").arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap");
    cmd.arg("-virtfs").arg(format!("local,path={out_s},mount_tag=meshdout,security_model=none,multidevs=remap"));
    let cmdline = format!("{cmd:?}");
    std::fs::write(run_dir.join("qemu.cmd"), &cmdline).context("writing qemu.cmd")?;
    let qemu_log = std::fs::File::create(run_dir.join("qemu.log")).context("creating qemu.log")?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(qemu_log);

    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning qemu-system-x86_64 (install qemu-system-x86)")?;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        if start.elapsed() > run.timeout {
            // Best effort: the process may have exited between try_wait and kill.
            let _ = child.kill();
            child.wait().context("reaping qemu after timeout")?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let duration = start.elapsed();
    let console = read_lossy(&run_dir.join(SERIALS[0]));
    let output = read_lossy(&run_dir.join(SERIALS[1]));
    let status_log = read_lossy(&run_dir.join(SERIALS[2]));
    if env_flag("MESHD_VM_CONSOLE") {
        eprintln!("--- {cmdline}\n--- guest console ({}):\n{console}\n--- end of console", run_dir.display());
    }

    let exit_code = status_log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("MESHD_VM_EXIT="))
        .next_back()
        .and_then(|v| v.trim().parse::<i32>().ok());
    let init_failure = status_log.lines().find_map(|l| l.strip_prefix("MESHD_VM_INIT_FAILED: "));
    let problem = if status.is_none() {
        Some(format!("timed out after {:?}", run.timeout))
    } else if console.contains("Kernel panic") {
        Some("the guest kernel panicked".to_string())
    } else if let Some(what) = init_failure {
        Some(format!("guest init failed: {what}"))
    } else if exit_code.is_none() {
        let qemu = tail(&read_lossy(&run_dir.join("qemu.log")), 10);
        Some(format!("the guest stopped without reporting an exit code (qemu: {status:?}; {qemu})"))
    } else {
        None
    };
    if let Some(problem) = problem {
        bail!(
            "VM run of {:?} on kernel {} ({}) failed: {problem}\nrun dir kept: {} \
             (MESHD_VM_LOGLEVEL=7 gives a verbose console)\n\
             --- last 60 lines of the guest console:\n{}\n--- last 60 lines of the command output:\n{}",
            run.command,
            run.kernel.release,
            accel.name(),
            run_dir.display(),
            tail(&console, 60),
            tail(&output, 60)
        );
    }
    Ok(VmOutcome { exit_code: exit_code.unwrap_or(-1), console, output, duration, accel })
}

/// Where the guest mounts its own file systems over the host's tree.
const GUEST_MOUNTS: [&str; 3] = ["/tmp", "/run", "/dev"];

/// The host paths the run needs — the workspace, the run dir, the command's directory — that lie
/// under a guest mount and so must be carried over it, outermost only.
fn hidden_in_guest(run: &VmRun, run_dir: &Path) -> Result<Vec<String>> {
    let program = run.command.first().map(Path::new).and_then(Path::parent).filter(|p| p.is_absolute());
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in [Some(workspace_root().as_path()), Some(run_dir), program].into_iter().flatten() {
        let p = std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))?;
        if GUEST_MOUNTS.iter().any(|m| p.starts_with(m)) {
            paths.push(p);
        }
    }
    paths.sort();
    paths.dedup_by(|inner, outer| inner.starts_with(outer));
    paths.iter().map(|p| check_plain_path(p).map(str::to_string)).collect()
}

/// `target/vm/run-N`, N the lowest free number (mkdir is the atomic claim).
pub(super) fn new_run_dir() -> Result<PathBuf> {
    let base = vm_dir()?;
    for n in 1..10_000 {
        let dir = base.join(format!("run-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free run dir under {} (remove old run-* dirs)", base.display())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script PID 1 runs after switch_root: environment, the command, exit code to ttyS2, power off.
fn guest_script(run: &VmRun, out: &str) -> Result<String> {
    if run.command.is_empty() {
        bail!("VmRun.command is empty");
    }
    let mut s = String::from("# generated by cargo xtask (vm/qemu.rs); PID 1 in the guest\n");
    let mut env = vec![
        ("PATH".to_string(), GUEST_PATH.to_string()),
        ("HOME".to_string(), "/root".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("MESHD_VM".to_string(), "1".to_string()),
        ("MESHD_VM_OUT".to_string(), out.to_string()),
    ];
    env.extend(run.env.iter().cloned());
    for (k, v) in &env {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            bail!("invalid environment variable name {k:?} for the guest");
        }
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    let root = workspace_root();
    // PID 1 must not exit (that panics): it ends by exec'ing busybox's synchronous power-off.
    let root = quote(check_plain_path(&root)?);
    let off = "exec /bin/busybox poweroff -f";
    s.push_str(&format!("cd {root} || {{ echo \"MESHD_VM_INIT_FAILED: cd {root}\" >/dev/ttyS2; {off}; }}\n"));
    let argv: Vec<String> = run.command.iter().map(|a| quote(a)).collect();
    s.push_str(&format!("{} </dev/null >/dev/ttyS1 2>&1\n", argv.join(" ")));
    s.push_str("echo \"MESHD_VM_EXIT=$?\" >/dev/ttyS2\n");
    s.push_str(&format!("{off}\n"));
    Ok(s)
}
