//! `getsockopt(SO_ORIGINAL_DST)` on an accepted socket, answered by meshd's cgroup/getsockopt
//! program (attached to the agent's cgroup) from `ORIG_DST` — the same interface netfilter's
//! REDIRECT offers, so tools written for iptables-based meshes can read it too.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

const SO_ORIGINAL_DST: libc::c_int = 80;

/// The original destination of an accepted, redirected socket.
pub fn original_dst(sock: &impl AsRawFd, ipv6: bool) -> io::Result<SocketAddr> {
    let mut buf = [0u8; 28];
    let mut len = buf.len() as libc::socklen_t;
    let level = if ipv6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which is `len` bytes long.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), level, SO_ORIGINAL_DST, buf.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    parse_sockaddr(&buf[..len as usize])
}

fn parse_sockaddr(b: &[u8]) -> io::Result<SocketAddr> {
    let bad = || {
        io::Error::new(io::ErrorKind::InvalidData, format!("unexpected SO_ORIGINAL_DST answer of {} bytes", b.len()))
    };
    let family = u16::from_ne_bytes([*b.first().ok_or_else(bad)?, *b.get(1).ok_or_else(bad)?]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    match (family as libc::c_int, b.len()) {
        (libc::AF_INET, 16..) => Ok(SocketAddrV4::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]), port).into()),
        (libc::AF_INET6, 28..) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            Ok(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0).into())
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_parse() {
        let mut v4 = [0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 100, 1, 2]);
        assert_eq!(parse_sockaddr(&v4).unwrap(), "10.100.1.2:8080".parse::<SocketAddr>().unwrap());
        let mut v6 = [0u8; 28];
        v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(parse_sockaddr(&v6).unwrap(), "[fd00::1]:443".parse::<SocketAddr>().unwrap());
        assert!(parse_sockaddr(&v4[..8]).is_err());
    }
}
