//! A media process (FFmpeg, or the HLS test server) running in a pod: stdout discarded, stderr
//! kept in a file for the failure message, waited for with a deadline, killed when dropped.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{sys::signal::Signal, unistd::Pid};

use super::interrupt;

/// Arguments every FFmpeg run gets: no banner, no keyboard, no progress lines, warnings kept.
pub const COMMON: [&str; 5] = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning"];

const POLL: Duration = Duration::from_millis(50);

/// A running media process.
pub struct Proc {
    child: Option<Child>,
    pid: u32,
    pub what: String,
    pub stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` (typically `pod.command("ffmpeg")` with arguments) with its stderr in
    /// `stderr_path`.
    pub fn spawn(mut cmd: Command, what: &str, stderr_path: &Path) -> Result<Self> {
        let stderr = File::create(stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {what}"))?;
        let pid = child.id();
        Ok(Self { child: Some(child), pid, what: what.into(), stderr_path: stderr_path.into(), status: None })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its exit status if it has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Waits for the process to end. Past `deadline` (or on Ctrl-C in the demo) it is killed
    /// and this fails: a hang is a failure, never a wait forever.
    pub fn wait(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if interrupt::requested() {
                self.kill();
                bail!("interrupted while waiting for {}", self.what);
            }
            if start.elapsed() >= deadline {
                self.kill();
                bail!("{} did not end within {deadline:?} (hang); stderr:\n{}", self.what, tail(&self.stderr(), 15));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits and requires a zero exit status.
    pub fn wait_ok(&mut self, deadline: Duration) -> Result<()> {
        let status = self.wait(deadline)?;
        if !status.success() {
            bail!("{} failed ({status}); stderr:\n{}", self.what, tail(&self.stderr(), 15));
        }
        Ok(())
    }

    /// Sends `signal` to the process (if it still runs).
    pub fn signal(&mut self, signal: Signal) {
        if self.try_status().is_none() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
                self.status = child.wait().ok();
            }
        }
    }

    /// Waits until the process listens on TCP `port` (in its own network namespace), failing if
    /// it exits first or `timeout` passes.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !listening(self.pid, port) {
            if let Some(status) = self.try_status() {
                bail!("{} exited ({status}) before listening on {port}: {}", self.what, tail(&self.stderr(), 15));
            }
            if interrupt::requested() {
                bail!("interrupted while waiting for {} to listen", self.what);
            }
            if start.elapsed() >= timeout {
                bail!("{} does not listen on port {port} after {timeout:?}", self.what);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a socket of `pid`'s network namespace listens on TCP `port`:
/// `/proc/PID/net/tcp{,6}` list that namespace's sockets (state `0A` = LISTEN).
pub fn listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default().lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
        })
    })
}

/// Runs `cmd` to the end with a deadline (killed past it), collecting its output.
pub fn run_with_deadline(mut cmd: Command, what: &str, deadline: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(out) => return out.with_context(|| format!("wait for {what}")),
            Err(_) if start.elapsed() >= deadline || interrupt::requested() => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                bail!("{what} did not finish within {deadline:?} (or was interrupted)");
            }
            Err(_) => {}
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
