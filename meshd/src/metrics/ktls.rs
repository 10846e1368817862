//! Kernel TLS statistics from `/proc/net/tls_stat`. The file is per network namespace and the
//! agent's kTLS sockets live in the workloads' namespaces, so the agent reads it from each
//! workload's namespace worker (`/proc/thread-self/net/…`: `/proc/net` would name the
//! namespace of the agent's main thread). Absent where the kernel has no TLS module.

/// The statistics file as seen from the calling thread's network namespace.
pub const THREAD_TLS_STAT: &str = "/proc/thread-self/net/tls_stat";

/// How a `tls_stat` line is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `meshd_ktls_errors_total{error}`.
    Error(&'static str),
    /// `meshd_ktls_sessions_total{direction, mode}`: sessions ever opened.
    Sessions(&'static str, &'static str),
    /// `meshd_ktls_sessions_active{direction, mode}`.
    Active(&'static str, &'static str),
    /// `meshd_ktls_rekeys_total{direction}` (successful TLS 1.3 key updates).
    Rekeys(&'static str),
}

/// Maps a `tls_stat` name to its metric, or `None` for names this agent does not export.
pub fn kind(name: &str) -> Option<Kind> {
    Some(match name {
        "TlsCurrTxSw" => Kind::Active("tx", "sw"),
        "TlsCurrRxSw" => Kind::Active("rx", "sw"),
        "TlsCurrTxDevice" => Kind::Active("tx", "device"),
        "TlsCurrRxDevice" => Kind::Active("rx", "device"),
        "TlsTxSw" => Kind::Sessions("tx", "sw"),
        "TlsRxSw" => Kind::Sessions("rx", "sw"),
        "TlsTxDevice" => Kind::Sessions("tx", "device"),
        "TlsRxDevice" => Kind::Sessions("rx", "device"),
        "TlsTxRekeyOk" => Kind::Rekeys("tx"),
        "TlsRxRekeyOk" => Kind::Rekeys("rx"),
        "TlsDecryptError" => Kind::Error("decrypt_error"),
        "TlsRxDeviceResync" => Kind::Error("rx_device_resync"),
        "TlsDecryptRetry" => Kind::Error("decrypt_retry"),
        "TlsRxNoPadViolation" => Kind::Error("rx_no_pad_violation"),
        "TlsTxRekeyError" => Kind::Error("tx_rekey_error"),
        "TlsRxRekeyError" => Kind::Error("rx_rekey_error"),
        _ => return None,
    })
}

/// Parses `tls_stat` text: one `Name<whitespace>value` per line.
pub fn parse(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, value) = (it.next()?, it.next()?.parse().ok()?);
            Some((name.to_string(), value))
        })
        .collect()
}

/// Reads the statistics of the calling thread's network namespace, if the kernel has them.
pub fn read_here() -> Option<Vec<(String, u64)>> {
    std::fs::read_to_string(THREAD_TLS_STAT).ok().map(|t| parse(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_format() {
        let text =
            "TlsCurrTxSw                     \t1\nTlsTxSw                         \t7\nTlsDecryptError \t2\nbogus\n";
        let stats = parse(text);
        assert_eq!(stats, vec![("TlsCurrTxSw".into(), 1), ("TlsTxSw".into(), 7), ("TlsDecryptError".into(), 2)]);
        assert_eq!(kind("TlsDecryptError"), Some(Kind::Error("decrypt_error")));
        assert_eq!(kind("TlsCurrRxDevice"), Some(Kind::Active("rx", "device")));
        assert_eq!(kind("TlsSomethingNew"), None);
    }
}
