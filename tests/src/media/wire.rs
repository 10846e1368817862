//! Is there plaintext media on the wire? Four independent searches of a capture:
//! - MPEG-TS framing: a sync byte 0x47 every 188 bytes for [`TS_RUN`] packets in a row (in
//!   random bytes that happens once in 256^6 positions);
//! - samples of the sent file's bytes (what a TS-over-TCP sender writes to its socket);
//! - samples of the elementary streams (H.264 slices, AAC frames) that were sent: present
//!   whatever the container, since TS, FLV, RTP and HLS all carry them as contiguous chunks;
//! - protocol and encoder markers: x264's SEI text, RTSP/HTTP/RTMP keywords, the HLS playlist.
//!
//! The same search run on the (plaintext) received file must find plenty: that shows the
//! detector works on that kind of stream, so zero hits on the wire mean something.

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use anyhow::{ensure, Result};
use serde::Serialize;

use super::ffmpeg;

/// MPEG-TS packets in a row that count as plaintext TS.
pub const TS_RUN: usize = 6;
const TS_PACKET: usize = 188;
/// Every stream sample starts with this byte, so one `memchr` pass finds the candidates.
const ANCHOR: u8 = 0xA7;
const SAMPLE_LEN: usize = 32;

/// Markers of plaintext: x264's SEI, RTSP, HTTP/HLS and RTMP (AMF) keywords. All ≥ 8 bytes, so
/// none turns up by chance in a few hundred MB of ciphertext.
pub const MARKERS: [&str; 6] = ["x264 - core", "RTSP/1.0", "HTTP/1.1", "#EXTM3U\n", "#EXTINF:", "onMetaData"];

/// What a search found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Runs of [`TS_RUN`] TS packets.
    pub ts_sync_runs: usize,
    /// Occurrences of samples of the sent file's bytes.
    pub file_samples: usize,
    /// Occurrences of elementary-stream samples.
    pub stream_samples: usize,
    /// Occurrences of each marker that was found at least once.
    pub markers: Vec<(String, usize)>,
}

impl Findings {
    pub fn total(&self) -> usize {
        self.ts_sync_runs + self.file_samples + self.stream_samples + self.markers.iter().map(|(_, n)| n).sum::<usize>()
    }
}

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} TS sync runs, {} file samples, {} stream samples",
            self.ts_sync_runs, self.file_samples, self.stream_samples
        )?;
        for (m, n) in &self.markers {
            write!(f, ", {n}× {m:?}")?;
        }
        Ok(())
    }
}

/// Samples of a sent file and of its elementary streams to search for.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    file: Vec<Vec<u8>>,
    stream: Vec<Vec<u8>>,
}

impl Samples {
    /// Takes up to `count` 32-byte samples spread through `media` itself and as many again
    /// from its H.264 and AAC elementary streams (extracted host side), skipping low-entropy
    /// ones (padding, start codes) that could occur elsewhere.
    pub fn of(media: &Path, scratch: &Path, count: usize) -> Result<Self> {
        let file = pick(&std::fs::read(media)?, count);
        let mut stream = Vec::new();
        for (map, bsf, fmt, ext) in [("0:v:0", "h264_mp4toannexb", "h264", "h264"), ("0:a:0", "null", "adts", "aac")] {
            let out = scratch.with_extension(ext);
            let mut cmd = Command::new("ffmpeg");
            cmd.args(ffmpeg::COMMON).arg("-i").arg(media);
            cmd.args(["-map", map, "-c", "copy", "-bsf", bsf, "-f", fmt, "-y"]).arg(&out);
            let what = format!("extract {ext} from {}", media.display());
            let res = ffmpeg::run_with_deadline(cmd, &what, Duration::from_secs(60))?;
            ensure!(res.status.success(), "{what}: {}", String::from_utf8_lossy(&res.stderr).trim());
            let es = std::fs::read(&out)?;
            stream.extend(pick(&es, count / 2));
            let _ = std::fs::remove_file(&out);
        }
        ensure!(!file.is_empty() && !stream.is_empty(), "no usable samples in {}", media.display());
        Ok(Self { file, stream })
    }

    pub fn len(&self) -> usize {
        self.file.len() + self.stream.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to `count` samples, evenly spread, each starting with [`ANCHOR`].
fn pick(data: &[u8], count: usize) -> Vec<Vec<u8>> {
    if data.len() < SAMPLE_LEN * 4 || count == 0 {
        return Vec::new();
    }
    let step = data.len() / count;
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < count && at + SAMPLE_LEN <= data.len() {
        let Some(p) = memchr::memchr(ANCHOR, &data[at..]).map(|p| p + at) else { break };
        let Some(s) = data.get(p..p + SAMPLE_LEN) else { break };
        let mut seen = [false; 256];
        s.iter().for_each(|&b| seen[b as usize] = true);
        let distinct = seen.iter().filter(|&&x| x).count();
        if distinct >= 24 && !s.windows(3).any(|w| w[..2] == [0, 0] && w[2] <= 3) {
            out.push(s.to_vec());
            at = (p + step).max(p + SAMPLE_LEN);
        } else {
            at = p + 1;
        }
    }
    out
}

/// Counts runs of [`TS_RUN`] TS packets (non-overlapping).
pub fn ts_sync_runs(data: &[u8]) -> usize {
    let span = (TS_RUN - 1) * TS_PACKET;
    let (mut runs, mut next) = (0, 0);
    for i in memchr::memchr_iter(0x47, data) {
        if i >= next && i + span < data.len() && (1..TS_RUN).all(|k| data[i + k * TS_PACKET] == 0x47) {
            runs += 1;
            next = i + span + 1;
        }
    }
    runs
}

/// How often each needle (all at least 8 bytes long) occurs in `data`, in few passes: the
/// candidates are found with `memchr3` on the needles' first bytes, then matched by their
/// first 8 bytes. (Test code runs unoptimized; one `memmem` pass per needle was too slow for
/// captures of a few hundred MB.)
pub fn count_all(data: &[u8], needles: &[&[u8]]) -> Vec<usize> {
    let key = |b: &[u8]| -> [u8; 8] { b[..8].try_into().unwrap_or([0; 8]) };
    let pair = |b: &[u8]| usize::from(b[0]) << 8 | usize::from(b[1]);
    let mut by_prefix: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    // A cheap first filter: which (first byte, second byte) pairs start some needle.
    let mut pairs = vec![false; 1 << 16];
    for (i, n) in needles.iter().enumerate() {
        assert!(n.len() >= 8, "needles are at least 8 bytes long");
        by_prefix.entry(key(n)).or_default().push(i);
        pairs[pair(n)] = true;
    }
    let mut firsts: Vec<u8> = needles.iter().map(|n| n[0]).collect();
    firsts.sort_unstable();
    firsts.dedup();
    let mut counts = vec![0; needles.len()];
    for group in firsts.chunks(3) {
        let (a, b, c) = (group[0], group[group.len().min(2) - 1], group[group.len() - 1]);
        for p in memchr::memchr3_iter(a, b, c, data) {
            let Some(head) = data.get(p..p + 8) else { continue };
            if !pairs[pair(head)] {
                continue;
            }
            for &i in by_prefix.get(&key(head)).into_iter().flatten() {
                if data[p..].starts_with(needles[i]) {
                    counts[i] += 1;
                }
            }
        }
    }
    counts
}

/// Searches `data` for plaintext media.
pub fn scan(data: &[u8], samples: &Samples) -> Findings {
    let mut needles: Vec<&[u8]> = MARKERS.iter().map(|m| m.as_bytes()).collect();
    needles.extend(samples.file.iter().chain(&samples.stream).map(Vec::as_slice));
    let counts = count_all(data, &needles);
    let (file, stream) = counts[MARKERS.len()..].split_at(samples.file.len());
    let markers =
        MARKERS.iter().zip(&counts).filter(|(_, &n)| n > 0).map(|(m, &n)| (m.trim_end().to_string(), n)).collect();
    Findings {
        ts_sync_runs: ts_sync_runs(data),
        file_samples: file.iter().sum(),
        stream_samples: stream.iter().sum(),
        markers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ts_runs_but_not_in_noise() {
        let mut ts = vec![0u8; 188 * 10];
        ts.chunks_mut(188).for_each(|p| p[0] = 0x47);
        assert_eq!(ts_sync_runs(&ts), 1);
        let mut noise = vec![0u8; 1 << 20];
        crate::pattern::Pattern::new(7).fill(&mut noise);
        assert_eq!(ts_sync_runs(&noise), 0);
        assert_eq!(scan(&noise, &Samples::default()).total(), 0);
    }

    #[test]
    fn samples_skip_low_entropy_data() {
        assert!(pick(&vec![0xFFu8; 4096], 4).is_empty());
        let mut noise = vec![0u8; 4096];
        crate::pattern::Pattern::new(1).fill(&mut noise);
        let samples = pick(&noise, 4);
        assert_eq!(samples.len(), 4);
        assert!(samples.iter().all(|s| s[0] == ANCHOR && crate::capture::count(&noise, s) == 1));
    }

    #[test]
    fn counts_every_needle() {
        let data = b"..HTTP/1.1 200..x264 - core..HTTP/1.1..#EXTM3U\n";
        let needles: [&[u8]; 4] = [b"HTTP/1.1", b"x264 - core", b"#EXTM3U\n", b"absent!!"];
        assert_eq!(count_all(data, &needles), [2, 1, 1, 0]);
    }
}
