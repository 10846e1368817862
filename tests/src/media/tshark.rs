//! What tshark makes of a capture: which TLS version each server chose, and on which port.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{ensure, Result};
use serde::Serialize;

use super::ffmpeg::run_with_deadline;

/// One TLS ServerHello seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerHello {
    pub server_port: u16,
    /// "TLS 1.3", "TLS 1.2", or the raw version number.
    pub version: String,
}

/// The ServerHellos in `pcap` (TLS on any port: tshark is told to dissect `ports` as TLS).
pub fn server_hellos(pcap: &Path, ports: &[u16]) -> Result<Vec<ServerHello>> {
    crate::require::program("tshark", "tshark");
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap);
    for p in ports {
        cmd.args(["-d", &format!("tcp.port=={p},tls")]);
    }
    cmd.args(["-Y", "tls.handshake.type == 2", "-T", "fields", "-e", "tcp.srcport"]);
    cmd.args(["-e", "tls.handshake.extensions.supported_version", "-e", "tls.handshake.version"]);
    let out = run_with_deadline(cmd, "tshark", Duration::from_secs(60))?;
    ensure!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(parse).collect())
}

fn parse(line: &str) -> Option<ServerHello> {
    let mut cols = line.split('\t');
    let server_port = cols.next()?.trim().parse().ok()?;
    let (selected, legacy) = (cols.next().unwrap_or("").trim(), cols.next().unwrap_or("").trim());
    let raw = if selected.is_empty() { legacy } else { selected };
    let version = match raw {
        "0x0304" => "TLS 1.3".to_string(),
        "0x0303" => "TLS 1.2".to_string(),
        other => other.to_string(),
    };
    Some(ServerHello { server_port, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_selected_version_over_the_legacy_field() {
        assert_eq!(parse("15008\t0x0304\t0x0303").map(|h| h.version), Some("TLS 1.3".into()));
        assert_eq!(parse("443\t\t0x0303").map(|h| h.version), Some("TLS 1.2".into()));
        assert_eq!(parse("garbage"), None);
    }
}
