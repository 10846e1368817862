//! Checks that every TCP payload byte to or from a port in a capture is part of a well-formed
//! TLS record stream: the payload of each direction, in sequence order, must parse as TLS
//! record headers (content type 20–23, version 3.x, length ≤ 2^14 + 256) and their bodies.

use std::{collections::BTreeMap, path::Path};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;

/// What a capture held on one TCP port.
#[derive(Debug, Default)]
pub struct TlsReport {
    /// TCP connections (by 4-tuple direction) with payload on the port.
    pub directions: usize,
    /// Complete TLS records found.
    pub records: usize,
    /// Payload bytes examined.
    pub bytes: u64,
    /// Descriptions of payload that is not TLS (empty when all of it is).
    pub violations: Vec<String>,
}

type Dir = (Vec<u8>, u16, Vec<u8>, u16);

/// Reads `pcap` and checks the payload of every TCP segment to or from `port`.
pub fn check(pcap: &Path, port: u16) -> TlsReport {
    let file = std::fs::File::open(pcap).unwrap_or_else(|e| panic!("open {}: {e}", pcap.display()));
    let mut reader = PcapReader::new(file).unwrap_or_else(|e| panic!("read {}: {e}", pcap.display()));
    // Per direction: payload by sequence number (first copy wins; retransmissions are equal).
    let mut streams: BTreeMap<Dir, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    while let Some(pkt) = reader.next_packet() {
        let Ok(pkt) = pkt else { break };
        let Ok(sliced) = SlicedPacket::from_ethernet(&pkt.data) else { continue };
        let (src, dst) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (ip.header().source().to_vec(), ip.header().destination().to_vec()),
            Some(NetSlice::Ipv6(ip)) => (ip.header().source().to_vec(), ip.header().destination().to_vec()),
            _ => continue,
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { continue };
        if tcp.payload().is_empty() || (tcp.source_port() != port && tcp.destination_port() != port) {
            continue;
        }
        let dir = (src, tcp.source_port(), dst, tcp.destination_port());
        streams.entry(dir).or_default().entry(tcp.sequence_number()).or_insert_with(|| tcp.payload().to_vec());
    }
    let mut report = TlsReport { directions: streams.len(), ..TlsReport::default() };
    for (dir, segments) in streams {
        let stream = contiguous(&segments);
        report.bytes += stream.len() as u64;
        walk(&stream, &dir, &mut report);
    }
    report
}

/// The payload from the first segment on, up to the first gap (a capture may end mid-stream).
fn contiguous(segments: &BTreeMap<u32, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some((&first, _)) = segments.iter().next() else { return out };
    let mut next = first;
    while let Some(seg) = segments.get(&next) {
        out.extend_from_slice(seg);
        next = next.wrapping_add(seg.len() as u32);
    }
    out
}

fn walk(stream: &[u8], dir: &Dir, report: &mut TlsReport) {
    let mut at = 0usize;
    while at + 5 <= stream.len() {
        let (kind, major, len) =
            (stream[at], stream[at + 1], usize::from(u16::from_be_bytes([stream[at + 3], stream[at + 4]])));
        if !(20..=23).contains(&kind) || major != 3 || len > (1 << 14) + 256 {
            report.violations.push(format!(
                "{:?}:{} → {:?}:{} at byte {at}: {:02x?} is not a TLS record header",
                dir.0,
                dir.1,
                dir.2,
                dir.3,
                &stream[at..(at + 8).min(stream.len())]
            ));
            return;
        }
        if at + 5 + len > stream.len() {
            return; // the capture ended inside this record
        }
        report.records += 1;
        at += 5 + len;
    }
}
