//! Real media through the mesh: FFmpeg sources and receivers in pods, and the checks that say
//! whether what arrived is what was sent.
//!
//! # Layout
//! - [`Clip`] (here): the synthetic programme (lavfi `testsrc2` + `sine`, H.264 with a fixed
//!   GOP + AAC) and how to encode it.
//! - [`ffmpeg`]: an FFmpeg (or any) process in a pod with its stderr in a file, waited for with
//!   a deadline, killed on drop; "is it listening yet" without racing.
//! - [`apps`]: the command lines of each protocol's sender and receiver (MPEG-TS over TCP,
//!   RTMP, RTSP with TCP-interleaved transport, HLS over HTTP PUT/GET).
//! - [`framemd5`]: decoded-frame checksums and how two streams compare.
//! - [`wire`]: searching a capture of the link between the nodes for plaintext media.
//! - [`tshark`]: which TLS version the handshakes on the wire chose.
//! - [`agent_log`]: the agents' "flow closed" records (JSON log lines) and live flows.
//! - [`scenario`]: two nodes, a source pod on a and a receiver pod on b, both agents.
//! - [`verify`]: the checks the tests and the demo share (frames, wire), as data.
//! - [`interrupt`]: Ctrl-C handling for the demo (waits here stop early when it fires).

pub mod agent_log;
pub mod apps;
pub mod ffmpeg;
pub mod framemd5;
pub mod interrupt;
pub mod scenario;
pub mod tshark;
pub mod verify;
pub mod wire;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};

/// A synthetic audio/video programme.
#[derive(Debug, Clone, Copy)]
pub struct Clip {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Number of video frames (the clip lasts `frames / fps` seconds).
    pub frames: u32,
    /// Keyframe interval in frames (fixed: no scene-cut keyframes), so HLS segments and the
    /// frames a late joiner can decode are predictable.
    pub gop: u32,
    pub sample_rate: u32,
}

impl Clip {
    /// A few seconds of 640x360 at 25 fps, 1 s GOP, 48 kHz audio.
    pub fn short(seconds: u32) -> Self {
        Self { width: 640, height: 360, fps: 25, frames: 25 * seconds, gop: 25, sample_rate: 48_000 }
    }

    /// Many minutes of small frames: cheap to encode and decode, so a long programme runs fast.
    pub fn long(minutes: u32) -> Self {
        Self { width: 320, height: 180, fps: 25, frames: 25 * 60 * minutes, gop: 50, sample_rate: 16_000 }
    }

    pub fn seconds(&self) -> f64 {
        f64::from(self.frames) / f64::from(self.fps)
    }

    /// Input and encoder arguments (everything before the output). `realtime` adds `-re`.
    pub fn encode_args(&self, realtime: bool) -> Vec<String> {
        let secs = self.seconds();
        let mut args: Vec<String> = Vec::new();
        if realtime {
            args.push("-re".into());
        }
        let video = format!("testsrc2=size={}x{}:rate={}:duration={secs}", self.width, self.height, self.fps);
        let audio = format!("sine=frequency=440:beep_factor=4:sample_rate={}:duration={secs}", self.sample_rate);
        let gop = self.gop.to_string();
        for a in [
            "-f",
            "lavfi",
            "-i",
            &video,
            "-f",
            "lavfi",
            "-i",
            &audio,
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            &gop,
            "-keyint_min",
            &gop,
            "-sc_threshold",
            "0",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ] {
            args.push(a.to_string());
        }
        args
    }

    /// Encodes the clip into `out` (format from the extension) on the host, as fast as possible.
    pub fn encode(&self, out: &Path) -> Result<()> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(ffmpeg::COMMON).args(self.encode_args(false)).arg("-y").arg(out);
        let what = format!("encode the reference clip {}", out.display());
        let output = ffmpeg::run_with_deadline(cmd, &what, Duration::from_secs(120))?;
        ensure!(output.status.success(), "{what}: {}", String::from_utf8_lossy(&output.stderr).trim());
        let len = std::fs::metadata(out).with_context(|| format!("{what}: no output"))?.len();
        ensure!(len > 0, "{what}: empty output");
        Ok(())
    }
}
