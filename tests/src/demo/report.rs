//! The demo's report: every number it prints, as JSON (`target/demo/report.json`), and the
//! short human summary.

use std::{fmt::Write, path::Path};

use anyhow::{Context, Result};
use meshd_tests::media::{agent_log::ClosedFlow, framemd5::Comparison, tshark::ServerHello, verify::WireCheck, Clip};
use serde::Serialize;

/// One named check and whether it passed.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Durations {
    pub setup_s: f64,
    pub stream_s: f64,
    pub verify_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sizes {
    /// The encoded MPEG-TS the source produced (teed to a local file).
    pub sent_file: u64,
    /// The receiver's file (`-c copy` into a new TS).
    pub received_file: u64,
    /// Bytes agent a took from the source (its outbound flow's `bytes_out`).
    pub through_agent_a: u64,
    /// Bytes agent b gave the receiver (its inbound flow's `bytes_in`).
    pub through_agent_b: u64,
    /// Everything captured on the link between the nodes (packets with headers).
    pub captured_on_wire: u64,
}

/// The demo's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    /// Set when the demo could not finish (setup failure, hang, Ctrl-C).
    pub error: Option<String>,
    pub frames_sent: usize,
    pub frames_received: usize,
    pub audio_frames_sent: usize,
    pub audio_frames_received: usize,
    pub framemd5_match: bool,
    pub plaintext_hits_on_wire: usize,
    /// Whether the userspace (rustls) or kernel TLS data path carried the flow: from
    /// `meshd status --json` while streaming, cross-checked with the "flow closed" records.
    pub data_path: String,
    pub source_identity: String,
    pub destination_identity: String,
    pub destination: String,
    pub wire_tls: Vec<ServerHello>,
    pub durations: Durations,
    pub sizes: Sizes,
    pub clip: Option<ClipInfo>,
    pub frames: Option<Comparison>,
    pub wire: Option<WireCheck>,
    pub flow_agent_a: Option<ClosedFlow>,
    pub flow_agent_b: Option<ClosedFlow>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipInfo {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u32,
    pub gop: u32,
    pub seconds: f64,
    pub video: &'static str,
    pub audio: &'static str,
    pub transport: &'static str,
}

impl ClipInfo {
    pub fn new(clip: &Clip) -> Self {
        Self {
            width: clip.width,
            height: clip.height,
            fps: clip.fps,
            frames: clip.frames,
            gop: clip.gop,
            seconds: clip.seconds(),
            video: "H.264 (libx264 ultrafast, fixed GOP)",
            audio: "AAC",
            transport: "MPEG-TS over TCP (ffmpeg -re → tcp://receiver:9000, receiver -listen 1, -c copy)",
        }
    }
}

impl Report {
    pub fn check(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { name, ok, detail: detail.into() });
    }

    /// All checks passed and there was no error.
    pub fn finish(&mut self) {
        self.ok = self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.ok);
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))
    }

    pub fn summary(&self, report_path: &Path) -> String {
        let mut s = String::new();
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        if let Some(c) = &self.clip {
            let _ = writeln!(
                s,
                "meshd media demo: {:.0} s of {}x{} H.264 + AAC at {} fps, MPEG-TS over plain TCP from pod \"source\" \
                 (node a) to pod \"receiver\" (node b); the mesh encrypts it",
                c.seconds, c.width, c.height, c.fps
            );
        }
        if self.checks.is_empty() {
            let error = self.error.as_deref().unwrap_or("no checks ran");
            let _ = write!(s, "  ERROR       {error}\n  result      FAIL  report: {}", report_path.display());
            return s;
        }
        let tls: Vec<String> =
            self.wire_tls.iter().map(|h| format!("{} on port {}", h.version, h.server_port)).collect();
        let _ = writeln!(s, "  identities  {} -> {}", self.source_identity, self.destination_identity);
        let why = if self.data_path == "userspace" {
            "; this kernel has no kernel TLS, so rustls encrypts in the agent — `cargo xtask vm-test` shows the kTLS path"
        } else {
            ""
        };
        let _ = writeln!(s, "  data path   {}  (wire: {}{why})", self.data_path, tls.join(", "));
        let _ = writeln!(
            s,
            "  frames      video {}/{}, audio {}/{}; framemd5 of decoded frames identical: {}",
            self.frames_received,
            self.frames_sent,
            self.audio_frames_received,
            self.audio_frames_sent,
            yes(self.framemd5_match)
        );
        if let Some(w) = &self.wire {
            let _ = writeln!(
                s,
                "  wire        {} plaintext hits in {} captured between the nodes (same search finds {} in the received file)",
                self.plaintext_hits_on_wire,
                mb(w.capture_bytes as u64),
                w.control.total()
            );
        }
        let z = &self.sizes;
        let _ = writeln!(
            s,
            "  bytes       sent {}, through agent a {}, agent b {}, received file {} (ffmpeg re-muxes what it receives)",
            mb(z.sent_file),
            mb(z.through_agent_a),
            mb(z.through_agent_b),
            mb(z.received_file)
        );
        let d = &self.durations;
        let _ = writeln!(
            s,
            "  time        setup {:.1} s, stream {:.1} s, verify {:.1} s, total {:.1} s",
            d.setup_s, d.stream_s, d.verify_s, d.total_s
        );
        for c in self.checks.iter().filter(|c| !c.ok) {
            let _ = writeln!(s, "  FAILED      {}: {}", c.name, c.detail);
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  ERROR       {e}");
        }
        let passed = self.checks.iter().filter(|c| c.ok).count();
        let verdict = if self.ok { "PASS" } else { "FAIL" };
        let _ = write!(
            s,
            "  result      {verdict} ({passed}/{} checks)  report: {}",
            self.checks.len(),
            report_path.display()
        );
        s
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
