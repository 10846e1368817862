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
    // Per direction: payload by sequence number relative to the stream's start (the SYN's, or
    // else the first segment seen): absolute numbers start anywhere and wrap past 2^32, so their
    // order is not the stream's. First copy wins; retransmissions are equal.
    let mut streams: BTreeMap<Dir, (u32, BTreeMap<u32, Vec<u8>>)> = BTreeMap::new();
    while let Some(pkt) = reader.next_packet() {
        let Ok(pkt) = pkt else { break };
        let Ok(sliced) = SlicedPacket::from_ethernet(&pkt.data) else { continue };
        let (src, dst) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (ip.header().source().to_vec(), ip.header().destination().to_vec()),
            Some(NetSlice::Ipv6(ip)) => (ip.header().source().to_vec(), ip.header().destination().to_vec()),
            _ => continue,
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { continue };
        if tcp.source_port() != port && tcp.destination_port() != port {
            continue;
        }
        let dir = (src, tcp.source_port(), dst, tcp.destination_port());
        let seq = tcp.sequence_number();
        if tcp.syn() {
            streams.insert(dir, (seq.wrapping_add(1), BTreeMap::new()));
            continue;
        }
        if tcp.payload().is_empty() {
            continue;
        }
        let (start, segments) = streams.entry(dir).or_insert_with(|| (seq, BTreeMap::new()));
        segments.entry(seq.wrapping_sub(*start)).or_insert_with(|| tcp.payload().to_vec());
    }
    streams.retain(|_, (_, segments)| !segments.is_empty());
    let mut report = TlsReport { directions: streams.len(), ..TlsReport::default() };
    for (dir, (_, segments)) in streams {
        let stream = contiguous(&segments);
        report.bytes += stream.len() as u64;
        walk(&stream, &dir, &mut report);
    }
    report
}

/// The payload from the stream's start on (relative sequence 0), up to the first gap (a capture
/// may end mid-stream, or begin after the start and so hold nothing checkable).
fn contiguous(segments: &BTreeMap<u32, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = 0u32;
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

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapPacket, PcapWriter};

    use super::*;

    /// One TLS application-data record of `len` body bytes.
    fn record(len: usize) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.extend(std::iter::repeat_n(0xa5, len));
        r
    }

    /// Writes `payload` from 10.0.0.1:40000 to 10.0.0.2:15008 starting at `isn` in `mss`-byte
    /// segments, in the given segment order, optionally preceded by the SYN.
    fn pcap(name: &str, isn: u32, payload: &[u8], mss: usize, syn: bool, order: impl Fn(usize) -> usize) -> TempPcap {
        let file = TempPcap(std::env::temp_dir().join(format!("meshd-tls-check-{}-{name}.pcap", std::process::id())));
        let mut w = PcapWriter::new(std::fs::File::create(&file.0).expect("create pcap")).expect("pcap header");
        let mut put = |seq: u32, syn: bool, data: &[u8]| {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 15008, seq, 65535);
            let b = if syn { b.syn() } else { b.ack(1) };
            let mut pkt = Vec::new();
            b.write(&mut pkt, data).expect("build packet");
            w.write_packet(&PcapPacket::new(std::time::Duration::ZERO, pkt.len() as u32, &pkt)).expect("write");
        };
        if syn {
            put(isn, true, &[]);
        }
        let chunks: Vec<_> = payload.chunks(mss).collect();
        for i in 0..chunks.len() {
            let k = order(i);
            put(isn.wrapping_add(1 + (k * mss) as u32), false, chunks[k]);
        }
        file
    }

    /// A capture file removed when dropped.
    struct TempPcap(std::path::PathBuf);

    impl TempPcap {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPcap {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_stream_whose_sequence_numbers_wrap_is_read_in_stream_order() {
        let stream: Vec<u8> = (0..20).flat_map(|i| record(100 + i)).collect();
        for syn in [true, false] {
            let f = pcap(&format!("wrap-{syn}"), u32::MAX - 700, &stream, 300, syn, |i| i);
            let r = check(f.path(), 15008);
            assert!(r.violations.is_empty(), "syn={syn}: {:?}", r.violations);
            assert_eq!((r.records, r.directions, r.bytes), (20, 1, stream.len() as u64), "syn={syn}");
        }
    }

    #[test]
    fn reordered_segments_after_the_syn_are_put_back_in_order() {
        let stream: Vec<u8> = (0..10).flat_map(|_| record(250)).collect();
        let n = stream.len().div_ceil(200);
        let f = pcap("reorder", u32::MAX - 50, &stream, 200, true, |i| if i == 0 { 0 } else { n - i });
        let r = check(f.path(), 15008);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.records, 10);
    }

    #[test]
    fn plaintext_on_the_port_is_a_violation() {
        let mut stream = record(64);
        stream.extend_from_slice(&[0x47; 188]); // an MPEG-TS packet after one good record
        let f = pcap("plain", u32::MAX - 100, &stream, 120, true, |i| i);
        let r = check(f.path(), 15008);
        assert_eq!(r.records, 1);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("at byte 69"), "{:?}", r.violations);
    }
}
