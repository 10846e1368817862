//! Packet captures on the simulated links (tcpdump inside a node's namespace), and searching
//! them for plaintext that must not be there.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::cluster::Node;

pub mod packets;
pub mod tls;

/// A running capture; stop it to read the file.
pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
}

impl Capture {
    /// Captures full packets on `iface` of `node` into a file in the node's run folder.
    pub fn start(node: &Node, iface: &str, filter: &str) -> Self {
        Self::start_limited(node, iface, filter, None)
    }

    /// As [`Capture::start`], stopping by itself after `packets` packets (for small guests).
    pub fn start_limited(node: &Node, iface: &str, filter: &str, packets: Option<u32>) -> Self {
        crate::require::program("tcpdump", "tcpdump");
        let file = node.run_dir().join(format!("capture-{}-{iface}.pcap", node.name));
        let mut cmd = node.command("tcpdump");
        // A large kernel buffer (-B, KiB): at full mesh speed a small one drops packets.
        cmd.args(["-i", iface, "-s", "0", "-B", "262144", "--immediate-mode", "-U", "-n", "-w"]).arg(&file);
        if let Some(n) = packets {
            cmd.args(["-c", &n.to_string()]);
        }
        if !filter.is_empty() {
            cmd.arg(filter);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn tcpdump");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Generous: under emulation (the VM tier) tcpdump takes seconds to start.
        let started = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        assert!(started.contains("listening on"), "tcpdump on {iface} did not start: {started:?}");
        Self { child: Some(child), file }
    }

    /// Stops the capture (letting tcpdump flush) and returns the capture's bytes.
    pub fn stop(&mut self) -> Vec<u8> {
        if let Some(mut child) = self.child.take() {
            std::thread::sleep(Duration::from_millis(300));
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
        std::fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How many times `needle` occurs in `haystack`.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    memchr::memmem::find_iter(haystack, needle).count()
}
