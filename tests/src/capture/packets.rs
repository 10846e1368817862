//! Counting packets in a capture: e.g. "no SYN ever left for a connection denied at connect()".

use std::{net::IpAddr, path::Path};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;

/// TCP SYNs (without ACK) from `src` in the capture at `pcap`.
pub fn syns_from(pcap: &Path, src: IpAddr) -> usize {
    let Ok(file) = std::fs::File::open(pcap) else { return 0 };
    let Ok(mut reader) = PcapReader::new(file) else { return 0 };
    let mut n = 0;
    while let Some(Ok(pkt)) = reader.next_packet() {
        let Ok(sliced) = SlicedPacket::from_ethernet(&pkt.data) else { continue };
        let from: IpAddr = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => ip.header().source_addr().into(),
            Some(NetSlice::Ipv6(ip)) => ip.header().source_addr().into(),
            _ => continue,
        };
        if let Some(TransportSlice::Tcp(tcp)) = &sliced.transport {
            if from == src && tcp.syn() && !tcp.ack() {
                n += 1;
            }
        }
    }
    n
}
