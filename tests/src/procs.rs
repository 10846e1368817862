//! Running test programs inside pods and nodes: servers that are ready when the call returns,
//! clients with a deadline, all killed on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

/// A background process, killed when dropped.
pub struct Background {
    pub child: Child,
    pub what: String,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and waits (up to 10 s) for its first stdout line to contain `ready`.
pub fn spawn_ready(mut cmd: Command, what: &str, ready: &str) -> Background {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // keep draining so the child never blocks on a full pipe
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    assert!(line.contains(ready), "{what} did not become ready (first line {line:?})");
    Background { child, what: what.into() }
}

/// Runs `cmd` to completion with a deadline; panics if it overruns.
pub fn run(mut cmd: Command, what: &str, deadline: Duration) -> Output {
    let child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("{what} did not finish within {deadline:?}");
        }
    }
}

/// Runs `cmd` and returns its stdout, panicking with stderr when it fails.
pub fn run_ok(cmd: Command, what: &str, deadline: Duration) -> String {
    let out = run(cmd, what, deadline);
    assert!(out.status.success(), "{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
