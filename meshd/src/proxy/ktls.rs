//! Kernel TLS: the start-up probe, the key hand-off, and TLS control records on a kTLS socket
//! (close_notify out; alerts and handshake messages in).

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
};

use ktls::CorkStream;
use ktls_sys::bindings as sys;
use serde::Serialize;
use tokio_rustls::TlsStream;

const SOL_TLS: libc::c_int = 282;
const TCP_ULP: libc::c_int = 31;
pub const RECORD_ALERT: u8 = 21;
pub const RECORD_HANDSHAKE: u8 = 22;
pub const RECORD_APPLICATION_DATA: u8 = 23;

/// What this kernel's TLS offers, found once at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct KtlsSupport {
    /// TLS ULP present and TLS 1.3 AES-GCM keys accepted for both directions.
    pub available: bool,
    /// The kernel accepts new TLS 1.3 keys on a live socket (KeyUpdate; Linux ≥ 6.14).
    pub rekey: bool,
    /// Why not, when unavailable.
    pub detail: String,
}

/// Probes kernel TLS on a loopback socket pair.
pub fn probe() -> KtlsSupport {
    match try_probe() {
        Ok(rekey) => KtlsSupport { available: true, rekey, detail: "kernel TLS available".into() },
        Err(detail) => KtlsSupport { available: false, rekey: false, detail },
    }
}

fn try_probe() -> Result<bool, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("probe socket: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("probe socket: {e}"))?;
    let client = TcpStream::connect(addr).map_err(|e| format!("probe connect: {e}"))?;
    let _server = listener.accept().map_err(|e| format!("probe accept: {e}"))?;
    let fd = client.as_raw_fd();
    set_ulp(fd).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => "the kernel has no TLS upper layer protocol (CONFIG_TLS is off or the tls module \
                               cannot be loaded)"
            .to_string(),
        _ => format!("setsockopt(TCP_ULP, \"tls\"): {e}"),
    })?;
    let info = probe_crypto_info();
    set_crypto(fd, sys::TLS_TX, &info)
        .map_err(|e| format!("kernel TLS refuses TLS 1.3 AES-GCM-128 transmit keys: {e}"))?;
    set_crypto(fd, sys::TLS_RX, &info)
        .map_err(|e| format!("kernel TLS refuses TLS 1.3 AES-GCM-128 receive keys: {e}"))?;
    // Linux ≥ 6.14 accepts a second key for TLS 1.3 (KeyUpdate); older kernels say EBUSY.
    Ok(set_crypto(fd, sys::TLS_TX, &info).is_ok())
}

fn probe_crypto_info() -> sys::tls12_crypto_info_aes_gcm_128 {
    sys::tls12_crypto_info_aes_gcm_128 {
        info: sys::tls_crypto_info {
            version: ((sys::TLS_1_3_VERSION_MAJOR << 8) | sys::TLS_1_3_VERSION_MINOR) as u16,
            cipher_type: sys::TLS_CIPHER_AES_GCM_128 as u16,
        },
        iv: [0; 8],
        key: [0; 16],
        salt: [0; 4],
        rec_seq: [0; 8],
    }
}

fn set_ulp(fd: RawFd) -> io::Result<()> {
    // SAFETY: passes a 3-byte buffer of the given length to setsockopt.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_TCP, TCP_ULP, b"tls".as_ptr().cast(), 3) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Installs a crypto info struct for one direction (`sys::TLS_TX` or `sys::TLS_RX`).
pub fn set_crypto<T>(fd: RawFd, direction: u32, info: &T) -> io::Result<()> {
    // SAFETY: `info` is a plain kernel crypto-info struct of `size_of::<T>()` bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            direction as libc::c_int,
            (info as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Hands the session keys of an established rustls connection to the kernel (both directions)
/// after draining what rustls already read. Returns the drained plaintext and the socket.
pub async fn install(
    tls: TlsStream<CorkStream<tokio::net::TcpStream>>,
) -> Result<(Option<Vec<u8>>, tokio::net::TcpStream), ktls::Error> {
    let stream = match tls {
        TlsStream::Client(c) => ktls::config_ktls_client(c).await?,
        TlsStream::Server(s) => ktls::config_ktls_server(s).await?,
    };
    Ok(stream.into_raw())
}

/// Sends a TLS close_notify alert on a kTLS socket.
pub fn send_close_notify(fd: RawFd) -> io::Result<()> {
    send_record(fd, RECORD_ALERT, &[1, 0])
}

/// Sends one record of type `record_type` on a kTLS socket.
pub fn send_record(fd: RawFd, record_type: u8, payload: &[u8]) -> io::Result<()> {
    let mut control = [0u8; 64];
    let mut iov = libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: payload.len() };
    // SAFETY: msghdr and cmsg are built over local buffers that outlive the sendmsg call; the
    // CMSG_* macros keep every access inside `control`.
    unsafe {
        let space = libc::CMSG_SPACE(1) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = sys::TLS_SET_RECORD_TYPE as libc::c_int;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(cmsg) = record_type;
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads the record at the head of a kTLS receive queue with its type (used when splice
/// refuses a non-data record). Returns `(record type, payload length)`; length 0 with type
/// 0 means end of stream.
pub fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut control = [0u8; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as in `send_record`; the kernel writes at most `msg_controllen` control bytes
    // and `iov_len` payload bytes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut record_type = if n == 0 { 0 } else { RECORD_APPLICATION_DATA };
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == sys::TLS_GET_RECORD_TYPE as libc::c_int {
                record_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((record_type, n as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_gives_a_verdict_with_a_reason() {
        let s = probe();
        // Either way the verdict must be explained; on a kernel without CONFIG_TLS (this
        // development machine) it must say so rather than fail obscurely.
        assert!(!s.detail.is_empty());
        if !s.available {
            assert!(!s.rekey);
            assert!(s.detail.contains("TLS"), "{}", s.detail);
        }
    }
}
