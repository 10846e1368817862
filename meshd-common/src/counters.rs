//! Per-CPU counters kept by the eBPF programs. `Reason` counts every error path (the `ERRORS`
//! map); `Event` counts what the programs did (the `EVENTS` map). The agent sums them over CPUs
//! and exports them with these names as metric labels.

/// Why an eBPF program took an error path. Index into the `ERRORS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// connect4/6: recording the original destination in `SOCK_ORIG` failed; connect() is refused.
    ConnectRecordOrig = 0,
    /// connect4/6: the socket had no context socket (`ctx->sk` was null); connect() is refused.
    ConnectNoSocket = 1,
    /// sockops: copying the original destination into `ORIG_DST` failed; the agent will not find
    /// the flow and closes it.
    SockopsRecordFlow = 2,
    /// sockops: enabling the state callback failed; the entry is removed by the agent instead.
    SockopsCbFlags = 3,
    /// getsockopt(SO_ORIGINAL_DST): the caller's buffer is smaller than a socket address.
    GetsockoptShortBuffer = 4,
    /// getsockopt(SO_ORIGINAL_DST): no socket in the context.
    GetsockoptNoSocket = 5,
    /// getsockopt(SO_ORIGINAL_DST): the socket is not a flow meshd redirected.
    GetsockoptNotFound = 6,
    /// ingress: the packet's headers could not be read; it is let through to the socket, whose
    /// own TCP stack then judges it.
    IngressHeader = 7,
}

impl Reason {
    pub const COUNT: u32 = 8;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::ConnectRecordOrig,
        Reason::ConnectNoSocket,
        Reason::SockopsRecordFlow,
        Reason::SockopsCbFlags,
        Reason::GetsockoptShortBuffer,
        Reason::GetsockoptNoSocket,
        Reason::GetsockoptNotFound,
        Reason::IngressHeader,
    ];

    /// Metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::ConnectRecordOrig => "connect_record_orig",
            Reason::ConnectNoSocket => "connect_no_socket",
            Reason::SockopsRecordFlow => "sockops_record_flow",
            Reason::SockopsCbFlags => "sockops_cb_flags",
            Reason::GetsockoptShortBuffer => "getsockopt_short_buffer",
            Reason::GetsockoptNoSocket => "getsockopt_no_socket",
            Reason::GetsockoptNotFound => "getsockopt_not_found",
            Reason::IngressHeader => "ingress_header",
        }
    }
}

/// What an eBPF program did. Index into the `EVENTS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// connect4/6 of an enrolled workload redirected to its capture listener.
    Redirected = 0,
    /// connect4/6 of an enrolled workload to a destination outside the mesh: left alone.
    Direct = 1,
    /// connect4/6 of an enrolled workload to an excluded destination (loopback, DNS, excluded
    /// prefixes, meshd's own ports): left alone.
    Excluded = 2,
    /// sockops: a redirected flow was recorded in `ORIG_DST` at connection establishment.
    FlowRecorded = 3,
    /// sockops: a closing socket's `ORIG_DST` entry was removed.
    FlowRemoved = 4,
    /// getsockopt(SO_ORIGINAL_DST) answered from `ORIG_DST`.
    OrigDstAnswered = 5,
    /// connect4/6 refused by policy before any packet left.
    PolicyDenied = 6,
    /// connect4/6: the destination has no known identity; the destination agent decides.
    PolicyDeferred = 7,
    /// ingress: a plaintext connection attempt to a strict workload was dropped.
    PlaintextDropped = 8,
    /// ingress: a plaintext connection attempt to a permissive workload was let in (counted).
    PlaintextAccepted = 9,
    /// ingress: a plaintext connection from an allowed source (health checks) was let in.
    PlaintextAllowedSource = 10,
}

impl Event {
    pub const COUNT: u32 = 11;
    pub const ALL: [Event; Self::COUNT as usize] = [
        Event::Redirected,
        Event::Direct,
        Event::Excluded,
        Event::FlowRecorded,
        Event::FlowRemoved,
        Event::OrigDstAnswered,
        Event::PolicyDenied,
        Event::PolicyDeferred,
        Event::PlaintextDropped,
        Event::PlaintextAccepted,
        Event::PlaintextAllowedSource,
    ];

    /// Metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            Event::Redirected => "redirected",
            Event::Direct => "direct",
            Event::Excluded => "excluded",
            Event::FlowRecorded => "flow_recorded",
            Event::FlowRemoved => "flow_removed",
            Event::OrigDstAnswered => "orig_dst_answered",
            Event::PolicyDenied => "policy_denied",
            Event::PolicyDeferred => "policy_deferred",
            Event::PlaintextDropped => "plaintext_dropped",
            Event::PlaintextAccepted => "plaintext_accepted",
            Event::PlaintextAllowedSource => "plaintext_allowed_source",
        }
    }
}
