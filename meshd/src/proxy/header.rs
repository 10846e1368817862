//! The mesh header: the first bytes inside each agent-to-agent TLS stream.
//!
//! The source agent sends a fixed 28-byte [`Request`] naming the original destination; the
//! destination agent answers with a [`Response`] — a status and a short reason — before any
//! media flows. Both are parsed defensively: fixed sizes and limits, version checked, every
//! malformation a distinct error (the codec is fuzzed: `fuzz/fuzz_targets/header.rs`).
//!
//! ```text
//! Request  = "MSHQ" version:u8 family:u8(4|6) port:u16be reserved:[u8;4]=0 addr:[u8;16]
//! Response = "MSHR" version:u8 status:u8 reason_len:u16be reason:[u8; reason_len ≤ 512] (UTF-8)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 1;
pub const REQUEST_LEN: usize = 28;
pub const RESPONSE_HEAD_LEN: usize = 8;
pub const MAX_REASON: usize = 512;
const REQUEST_MAGIC: &[u8; 4] = b"MSHQ";
const RESPONSE_MAGIC: &[u8; 4] = b"MSHR";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("mesh header: bad magic {0:02x?} (the peer is not a meshd agent)")]
    Magic([u8; 4]),
    #[error("mesh header: unsupported version {0} (this agent speaks {VERSION})")]
    Version(u8),
    #[error("mesh header: unknown address family {0}")]
    Family(u8),
    #[error("mesh header: reserved bytes are not zero")]
    Reserved,
    #[error("mesh header: destination port 0")]
    Port,
    #[error("mesh header: IPv4 address with trailing bytes")]
    Padding,
    #[error("mesh header: unknown status {0}")]
    Status(u8),
    #[error("mesh header: reason of {0} bytes exceeds {MAX_REASON}")]
    ReasonTooLong(usize),
    #[error("mesh header: reason is not UTF-8")]
    ReasonUtf8,
}

/// The source agent's request: connect me to this destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub destination: SocketAddr,
}

/// What the destination agent reports before any media flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Connected to the destination: media may flow.
    Ok = 0,
    /// The destination refused the connection (nothing listens there).
    Refused = 1,
    /// The destination could not be reached in time.
    Unreachable = 2,
    /// Policy denies the source identity.
    Denied = 3,
    /// The request was not acceptable (e.g. not an address of this workload).
    BadRequest = 4,
    /// The destination agent failed.
    Internal = 5,
}

impl Status {
    fn from_u8(v: u8) -> Result<Self, Error> {
        Ok(match v {
            0 => Self::Ok,
            1 => Self::Refused,
            2 => Self::Unreachable,
            3 => Self::Denied,
            4 => Self::BadRequest,
            5 => Self::Internal,
            other => return Err(Error::Status(other)),
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Denied => "denied",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub reason: String,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(REQUEST_MAGIC);
        b[4] = VERSION;
        b[6..8].copy_from_slice(&self.destination.port().to_be_bytes());
        match self.destination.ip() {
            IpAddr::V4(a) => {
                b[5] = 4;
                b[12..16].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                b[5] = 6;
                b[12..28].copy_from_slice(&a.octets());
            }
        }
        b
    }

    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, Error> {
        check_magic(&b[0..4], REQUEST_MAGIC)?;
        if b[4] != VERSION {
            return Err(Error::Version(b[4]));
        }
        if b[8..12] != [0; 4] {
            return Err(Error::Reserved);
        }
        let port = u16::from_be_bytes([b[6], b[7]]);
        if port == 0 {
            return Err(Error::Port);
        }
        let ip = match b[5] {
            4 if b[16..28] == [0; 12] => IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
            4 => return Err(Error::Padding),
            6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[12..28]);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            f => return Err(Error::Family(f)),
        };
        Ok(Self { destination: SocketAddr::new(ip, port) })
    }
}

impl Response {
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self { status, reason }
    }

    pub fn encode(&self) -> Vec<u8> {
        let reason = &self.reason.as_bytes()[..self.reason.len().min(MAX_REASON)];
        let mut b = Vec::with_capacity(RESPONSE_HEAD_LEN + reason.len());
        b.extend_from_slice(RESPONSE_MAGIC);
        b.push(VERSION);
        b.push(self.status as u8);
        b.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        b.extend_from_slice(reason);
        b
    }

    /// Decodes the fixed head; returns the status and how many reason bytes follow.
    pub fn decode_head(b: &[u8; RESPONSE_HEAD_LEN]) -> Result<(Status, usize), Error> {
        check_magic(&b[0..4], RESPONSE_MAGIC)?;
        if b[4] != VERSION {
            return Err(Error::Version(b[4]));
        }
        let status = Status::from_u8(b[5])?;
        let len = usize::from(u16::from_be_bytes([b[6], b[7]]));
        if len > MAX_REASON {
            return Err(Error::ReasonTooLong(len));
        }
        Ok((status, len))
    }

    pub fn decode_reason(status: Status, reason: &[u8]) -> Result<Self, Error> {
        let reason = std::str::from_utf8(reason).map_err(|_| Error::ReasonUtf8)?;
        Ok(Self { status, reason: reason.into() })
    }
}

fn check_magic(got: &[u8], want: &[u8; 4]) -> Result<(), Error> {
    if got == want {
        Ok(())
    } else {
        let mut m = [0u8; 4];
        m.copy_from_slice(&got[..4]);
        Err(Error::Magic(m))
    }
}

/// Decodes any byte string as a request followed by a response, for fuzzing: must never panic.
pub fn fuzz(data: &[u8]) {
    if let Some(req) = data.get(..REQUEST_LEN) {
        let mut b = [0u8; REQUEST_LEN];
        b.copy_from_slice(req);
        if let Ok(r) = Request::decode(&b) {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    }
    if let Some(head) = data.get(..RESPONSE_HEAD_LEN) {
        let mut b = [0u8; RESPONSE_HEAD_LEN];
        b.copy_from_slice(head);
        if let Ok((status, len)) = Response::decode_head(&b) {
            if let Some(reason) = data.get(RESPONSE_HEAD_LEN..RESPONSE_HEAD_LEN + len) {
                if let Ok(r) = Response::decode_reason(status, reason) {
                    let enc = r.encode();
                    assert_eq!(enc.len(), RESPONSE_HEAD_LEN + len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
