//! Checks shared by the media tests and the demo. They return what they found; callers decide
//! (tests assert, the demo reports).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{
    framemd5::{Comparison, Frames},
    wire::{self, Findings, Samples},
};

/// Decodes both files (in parallel) and compares their frames (see [`super::framemd5`]).
pub fn frames(sent: &Path, received: &Path) -> Result<Comparison> {
    let (sent, received) = std::thread::scope(|s| {
        let received = s.spawn(|| Frames::of(received));
        (Frames::of(sent), received.join())
    });
    let received = received.map_err(|_| anyhow::anyhow!("decoding the received file panicked"))??;
    Ok(Comparison::new(&sent?, &received))
}

/// The plaintext search, on the wire and — as a control — on the received file.
#[derive(Debug, Clone, Serialize)]
pub struct WireCheck {
    /// What the capture of the link between the nodes contains (must be nothing).
    pub on_wire: Findings,
    /// What the same search finds in the plaintext received file (must be something, or the
    /// search proves nothing).
    pub control: Findings,
    pub capture_bytes: usize,
    pub samples: usize,
}

impl WireCheck {
    pub fn clean(&self) -> bool {
        self.on_wire.total() == 0 && self.control.total() > 0 && self.capture_bytes > 0
    }
}

impl std::fmt::Display for WireCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wire ({} bytes captured): {}; control search of the received file: {}",
            self.capture_bytes, self.on_wire, self.control
        )
    }
}

/// Searches `capture` for samples of the streams in `sent` (and markers, TS framing); runs the
/// same search on `received`. `scratch` is a path prefix for temporary files.
pub fn wire(capture: &[u8], sent: &Path, received: &Path, scratch: &Path) -> Result<WireCheck> {
    let samples = Samples::of(sent, scratch, 48)?;
    let received_bytes = std::fs::read(received)?;
    let (on_wire, control) = std::thread::scope(|s| {
        let control = s.spawn(|| wire::scan(&received_bytes, &samples));
        (wire::scan(capture, &samples), control.join())
    });
    Ok(WireCheck {
        on_wire,
        control: control.map_err(|_| anyhow::anyhow!("the control search panicked"))?,
        capture_bytes: capture.len(),
        samples: samples.len(),
    })
}
