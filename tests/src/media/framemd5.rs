//! "Frame by frame identical", made precise.
//!
//! We compare the MD5 of every *decoded* video picture and audio frame (`ffmpeg -f framemd5`),
//! per stream, in order, together with its decoded size. Not the container bytes: every
//! receiver remuxes (`-c copy` into a new TS/FLV/MKV file; HLS cuts segments; RTSP/RTMP
//! repacketize), so files differ even when nothing was lost. Not the packet timestamps either:
//! they are legitimately rebased (TS starts at 1.4 s, FLV counts milliseconds, RTP has its own
//! clock). And not the interleaving of audio and video, which each muxer chooses. What a viewer
//! sees and hears is the decoded frames: one lost, reordered, duplicated or corrupted byte of
//! compressed data changes a hash or the count (H.264 prediction carries an error into the
//! following frames until the next keyframe). Video is decoded with `-fps_mode passthrough`, so
//! FFmpeg neither drops nor duplicates frames to fit a frame rate.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use super::ffmpeg;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Decoded size in bytes (picture size × format, or samples × channels × 2).
    pub size: u64,
    pub md5: String,
}

/// The decoded frames of a file's first video and first audio stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frames {
    pub video: Vec<Frame>,
    pub audio: Vec<Frame>,
}

impl Frames {
    /// Decodes `path` (on the host) and hashes every frame.
    pub fn of(path: &Path) -> Result<Self> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(ffmpeg::COMMON).arg("-i").arg(path);
        cmd.args(["-map", "0:v:0", "-map", "0:a:0", "-fps_mode", "passthrough", "-f", "framemd5", "-"]);
        let what = format!("framemd5 of {}", path.display());
        let out = ffmpeg::run_with_deadline(cmd, &what, Duration::from_secs(180))?;
        let frames = Self::parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| what.clone())?;
        if !out.status.success() && frames.video.is_empty() {
            bail!("{what} failed ({}): {}", out.status, ffmpeg::tail(&String::from_utf8_lossy(&out.stderr), 10));
        }
        Ok(frames)
    }

    /// Parses framemd5 output: `#media_type N: video|audio` headers, then
    /// `stream, dts, pts, duration, size, hash` lines.
    pub fn parse(text: &str) -> Result<Self> {
        let (mut video_idx, mut audio_idx) = (None, None);
        let mut frames = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("#media_type ") {
                let (idx, kind) = rest.split_once(':').context("malformed #media_type line")?;
                let idx: usize = idx.trim().parse().context("stream index")?;
                match kind.trim() {
                    "video" => video_idx = Some(idx),
                    "audio" => audio_idx = Some(idx),
                    _ => {}
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let [stream, _, _, _, size, md5] = cols[..] else { bail!("malformed framemd5 line {line:?}") };
            let stream: usize = stream.parse().with_context(|| format!("stream index in {line:?}"))?;
            let frame = Frame { size: size.parse().with_context(|| format!("size in {line:?}"))?, md5: md5.into() };
            if Some(stream) == video_idx {
                frames.video.push(frame);
            } else if Some(stream) == audio_idx {
                frames.audio.push(frame);
            }
        }
        Ok(frames)
    }
}

/// How a received stream compares with the sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Comparison {
    pub video_sent: usize,
    pub video_received: usize,
    /// How many frames from the start are identical in both.
    pub video_equal_prefix: usize,
    pub audio_sent: usize,
    pub audio_received: usize,
    pub audio_equal_prefix: usize,
}

impl Comparison {
    pub fn new(sent: &Frames, received: &Frames) -> Self {
        let prefix = |a: &[Frame], b: &[Frame]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        Self {
            video_sent: sent.video.len(),
            video_received: received.video.len(),
            video_equal_prefix: prefix(&sent.video, &received.video),
            audio_sent: sent.audio.len(),
            audio_received: received.audio.len(),
            audio_equal_prefix: prefix(&sent.audio, &received.audio),
        }
    }

    /// Every sent frame arrived, identical and in order, and nothing else did.
    pub fn identical(&self) -> bool {
        self.identical_but_audio_tail(0)
    }

    /// Like [`Self::identical`], except that the last `missing` audio frames of the sent
    /// stream may be absent (a sender-side limit some protocols have; see the RTSP test).
    pub fn identical_but_audio_tail(&self, missing: usize) -> bool {
        self.video_sent > 0
            && self.audio_sent > missing
            && self.video_received == self.video_sent
            && self.video_equal_prefix == self.video_sent
            && self.audio_received == self.audio_sent - missing
            && self.audio_equal_prefix == self.audio_received
    }

    /// The received stream is a cut-short copy of the sent one: every received frame matches,
    /// except that the last `slack` frames of each stream (a partly transmitted frame at the
    /// cut) may differ.
    pub fn is_truncated_copy(&self, slack: usize) -> bool {
        self.video_received < self.video_sent
            && self.video_equal_prefix + slack >= self.video_received
            && self.audio_equal_prefix + slack >= self.audio_received.min(self.audio_sent)
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "video {}/{} frames received, first {} identical; audio {}/{} received, first {} identical",
            self.video_received,
            self.video_sent,
            self.video_equal_prefix,
            self.audio_received,
            self.audio_sent,
            self.audio_equal_prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "#tb 0: 1/25\n#media_type 0: video\n#media_type 1: audio\n#stream#, dts, pts, duration, size, hash\n\
        1, 0, 0, 1024, 2048, aa\n0, 1, 1, 1, 345600, bb\n1, 1024, 1024, 1024, 2048, cc\n0, 2, 2, 1, 345600, dd\n";

    #[test]
    fn parses_streams_by_media_type() {
        let f = Frames::parse(SAMPLE).expect("parse");
        assert_eq!(f.video.iter().map(|x| x.md5.as_str()).collect::<Vec<_>>(), ["bb", "dd"]);
        assert_eq!(f.audio.iter().map(|x| x.md5.as_str()).collect::<Vec<_>>(), ["aa", "cc"]);
        assert_eq!(f.video[0].size, 345_600);
    }

    #[test]
    fn a_changed_or_missing_frame_is_not_identical() {
        let sent = Frames::parse(SAMPLE).expect("parse");
        assert!(Comparison::new(&sent, &sent).identical());
        let mut changed = sent.clone();
        changed.video[1].md5 = "xx".into();
        assert!(!Comparison::new(&sent, &changed).identical());
        let mut short = sent.clone();
        short.audio.pop();
        assert!(!Comparison::new(&sent, &short).identical());
        assert!(Comparison::new(&sent, &short).identical_but_audio_tail(1));
        short.video.pop();
        assert!(Comparison::new(&sent, &short).is_truncated_copy(0));
        assert!(!Comparison::new(&sent, &Frames::default()).identical());
    }
}
