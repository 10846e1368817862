//! The data plane: one TLS 1.3 connection per flow between the source and destination agents.
//!
//! - [`outbound`]: a redirected connection accepted on a workload's capture listener is carried
//!   to `original destination IP : inbound port`, where the destination node's agent listens in
//!   the destination workload's namespace (no registry of nodes is needed).
//! - [`inbound`]: the destination side — handshake, authorize the peer identity, read the
//!   [`header`], connect to the local workload, answer, then move data.
//! - [`relay`]: the userspace (rustls) data path; [`ktls`] and [`splice`]: the kernel TLS data
//!   path, where bytes move by splice and never enter the agent.

pub mod header;
pub mod inbound;
pub mod ktls;
pub mod outbound;
pub mod rekey;
pub mod relay;
pub mod splice;

use std::{io, time::Duration};

/// Handshake, header exchange and connect deadlines.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a flow ended. Labels go to logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions ended with a clean half-close.
    Done,
    /// One side reset the connection.
    Reset,
    /// No byte moved for the configured idle timeout.
    IdleTimeout,
    /// The destination agent refused the flow (its status and reason).
    Refused { status: header::Status, reason: String },
    /// The flow could not be set up (connect, handshake, header).
    Setup(String),
    /// An I/O error in the data phase.
    Error(String),
    /// The kernel TLS record limit was reached and the kernel cannot rekey.
    RecordLimit,
    /// The agent is shutting down or the flow was revoked.
    Cancelled(String),
}

impl CloseReason {
    pub fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                Self::Reset
            }
            io::ErrorKind::TimedOut => Self::IdleTimeout,
            _ => Self::Error(e.to_string()),
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Reset => "reset",
            Self::IdleTimeout => "idle_timeout",
            Self::Refused { status, .. } => status.label(),
            Self::Setup(_) => "setup_failed",
            Self::Error(_) => "error",
            Self::RecordLimit => "record_limit",
            Self::Cancelled(_) => "cancelled",
        }
    }

    /// Whether the workload side should see a reset rather than a clean close.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Done)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { status, reason } => write!(f, "{}: {reason}", status.label()),
            Self::Setup(m) | Self::Error(m) | Self::Cancelled(m) => write!(f, "{}: {m}", self.label()),
            other => f.write_str(other.label()),
        }
    }
}

/// Makes the kernel answer the next close of `sock` with a reset (SO_LINGER 0), so the
/// application sees that its flow failed instead of a clean end of stream.
pub fn reset_on_close(sock: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}
