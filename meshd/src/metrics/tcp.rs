//! TCP health of a flow's sockets from `TCP_INFO` (one `getsockopt`, no packet inspection):
//! smoothed RTT, retransmissions, unacknowledged segments. A stalling media stream shows as a
//! rising RTT, retransmissions or a long time since data was last received.

use std::os::fd::{AsRawFd, BorrowedFd};

use serde::Serialize;

/// Which of a flow's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketSide {
    /// The agent-to-agent (TLS) connection: the network between nodes.
    Mesh,
    /// The connection to the local workload (capture side or the local server).
    Workload,
}

impl SocketSide {
    pub fn label(self) -> &'static str {
        match self {
            SocketSide::Mesh => "mesh",
            SocketSide::Workload => "workload",
        }
    }
}

/// What `TCP_INFO` says about one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpHealth {
    /// Smoothed round-trip time and its variation, microseconds.
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Segments currently considered lost, and sent but not yet acknowledged.
    pub lost: u32,
    pub unacked: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Milliseconds since data was last received on this socket.
    pub last_data_recv_ms: u32,
}

/// Reads `TCP_INFO` of a TCP socket.
pub fn sample(fd: BorrowedFd<'_>) -> std::io::Result<TcpHealth> {
    // SAFETY: tcp_info is a plain C struct of integers, for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a valid, writable tcp_info;
    // `fd` is a live descriptor for the duration of the borrow.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpHealth {
        rtt_us: info.tcpi_rtt,
        rttvar_us: info.tcpi_rttvar,
        total_retrans: info.tcpi_total_retrans,
        lost: info.tcpi_lost,
        unacked: info.tcpi_unacked,
        snd_cwnd: info.tcpi_snd_cwnd,
        last_data_recv_ms: info.tcpi_last_data_recv,
    })
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::fd::AsFd};

    use super::*;

    #[test]
    fn tcp_info_of_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let h = sample(c.as_fd()).unwrap();
        assert!(h.rtt_us > 0 && h.snd_cwnd > 0, "{h:?}");
        assert!(sample(std::io::stdin().as_fd()).is_err());
    }
}
