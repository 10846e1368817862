//! The FFmpeg command lines of each protocol's sender and receiver. Nothing here knows about
//! the mesh: applications use plain TCP to the other pod's address, as they would anywhere.

use std::{net::Ipv4Addr, path::Path, process::Command};

use super::Clip;
use crate::Pod;

/// A push protocol: the receiver listens in its pod, the sender connects to it and pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// MPEG-TS over a raw TCP connection.
    MpegTsTcp,
    /// RTMP publish (FLV inside), the receiver listens like a tiny RTMP server.
    Rtmp,
    /// RTSP ANNOUNCE/RECORD with RTP interleaved on the RTSP TCP connection; the receiver is
    /// FFmpeg's RTSP server (`-rtsp_flags listen`) and answers each request.
    RtspTcp,
}

impl Push {
    pub fn port(self) -> u16 {
        match self {
            Self::MpegTsTcp => 9000,
            Self::Rtmp => 1935,
            Self::RtspTcp => 8554,
        }
    }

    /// The receiver's file extension (the container it writes with `-c copy`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::MpegTsTcp => "ts",
            Self::Rtmp => "flv",
            Self::RtspTcp => "mkv",
        }
    }

    fn url(self, host: &str) -> String {
        match self {
            Self::MpegTsTcp => format!("tcp://{host}:{}", self.port()),
            Self::Rtmp => format!("rtmp://{host}:{}/live/x", self.port()),
            Self::RtspTcp => format!("rtsp://{host}:{}/live", self.port()),
        }
    }

    /// Output format options of the sender (everything between `-c copy` and the URL).
    fn sender_format(self) -> Vec<String> {
        match self {
            Self::MpegTsTcp => strings(&["-f", "mpegts"]),
            Self::Rtmp => strings(&["-f", "flv"]),
            // max_delay: one AAC frame per RTP packet (see the RTSP test for why it matters).
            Self::RtspTcp => strings(&["-max_delay", "30000", "-f", "rtsp", "-rtsp_transport", "tcp"]),
        }
    }

    /// The receiver: listens on [`Self::port`] and writes what arrives to `out` (`-c copy`).
    pub fn receiver(self, out: &Path) -> Vec<String> {
        let mut args = match self {
            Self::MpegTsTcp | Self::Rtmp => strings(&["-listen", "1"]),
            Self::RtspTcp => strings(&["-rtsp_flags", "listen", "-rtsp_transport", "tcp"]),
        };
        args.extend(strings(&["-i", &self.url("0.0.0.0"), "-map", "0", "-c", "copy", "-y"]));
        args.push(out.display().to_string());
        args
    }

    /// A sender that streams the file `input` as it is (`-c copy`), at its own pace with
    /// `realtime` (`-re`), else as fast as the connection takes it.
    pub fn sender(self, input: &Path, realtime: bool, dst: Ipv4Addr) -> Vec<String> {
        let mut args = if realtime { strings(&["-re"]) } else { Vec::new() };
        args.extend(strings(&["-i", &input.display().to_string(), "-map", "0", "-c", "copy"]));
        args.extend(self.sender_format());
        args.push(self.url(&dst.to_string()));
        args
    }

    /// A live sender: encodes `clip` and streams it, teeing the same encoded MPEG-TS into the
    /// local file `copy` (what was sent, byte for byte). MPEG-TS over TCP only.
    pub fn live_sender(self, clip: &Clip, realtime: bool, dst: Ipv4Addr, copy: &Path) -> Vec<String> {
        assert_eq!(self, Self::MpegTsTcp, "the live sender tees MPEG-TS");
        let mut args = clip.encode_args(realtime);
        // onfail=abort: if the network side fails, the sender fails (not just the file goes on).
        let tee = format!("[f=mpegts:onfail=abort]{}|[f=mpegts]{}", self.url(&dst.to_string()), copy.display());
        args.extend(strings(&["-f", "tee", &tee]));
        args
    }
}

/// HLS: the sender PUTs segments and playlist to an HTTP server in the receiver pod; a player
/// in a pod on the other node plays the stream back over HTTP.
pub mod hls {
    use super::*;

    pub const PORT: u16 = 8080;
    /// The server script (GET serves files, PUT stores them).
    pub const SERVER_PY: &str = include_str!("http_put_server.py");

    /// The HTTP server command in `pod`, serving and storing under `root`. `script` is where
    /// the script is written. Prints "listening PORT" when ready.
    pub fn server(pod: &Pod, script: &Path, root: &Path) -> std::io::Result<Command> {
        std::fs::write(script, SERVER_PY)?;
        let mut cmd = pod.command("python3");
        cmd.arg("-u").arg(script).arg(PORT.to_string()).arg(root);
        Ok(cmd)
    }

    fn base(dst: Ipv4Addr) -> String {
        format!("http://{dst}:{PORT}/live")
    }

    /// Publishes `input` as 1 s HLS segments with HTTP PUT (a VOD playlist, ended when done).
    pub fn publisher(input: &Path, realtime: bool, dst: Ipv4Addr) -> Vec<String> {
        let mut args = if realtime { strings(&["-re"]) } else { Vec::new() };
        let base = base(dst);
        args.extend(strings(&["-i", &input.display().to_string(), "-map", "0", "-c", "copy"]));
        args.extend(strings(&["-f", "hls", "-method", "PUT", "-hls_time", "1", "-hls_playlist_type", "vod"]));
        args.extend(strings(&["-hls_segment_filename", &format!("{base}/seg%03d.ts"), &format!("{base}/index.m3u8")]));
        args
    }

    /// Waits until the server has stored a finished playlist (`#EXT-X-ENDLIST`) under `root`
    /// and every segment it lists. FFmpeg's HTTP PUT does not wait for the server's answer, so
    /// the publisher can exit before the server has written the last files. Returns the
    /// number of segments.
    pub fn wait_published(root: &Path, timeout: std::time::Duration) -> anyhow::Result<usize> {
        let start = std::time::Instant::now();
        let dir = root.join("live");
        loop {
            let playlist = std::fs::read_to_string(dir.join("index.m3u8")).unwrap_or_default();
            let segments: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
            if playlist.contains("#EXT-X-ENDLIST") && segments.iter().all(|s| dir.join(s).is_file()) {
                return Ok(segments.len());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "the HLS server did not store a finished playlist and its segments within {timeout:?}; playlist:\n{playlist}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Plays the published stream back and stores it in `out` (MPEG-TS, `-c copy`).
    pub fn player(dst: Ipv4Addr, out: &Path) -> Vec<String> {
        let mut args = strings(&["-i", &format!("{}/index.m3u8", base(dst)), "-map", "0", "-c", "copy"]);
        args.extend(strings(&["-f", "mpegts", "-y", &out.display().to_string()]));
        args
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}
