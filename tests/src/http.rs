//! A tiny HTTP/1.0 GET for tests, run inside a network namespace (an agent's admin listener on
//! a node's 127.0.0.1, a Prometheus server's API), without curl.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

/// GETs `path` from `addr` inside the network namespace at `netns`: (status, body).
pub fn get(netns: &Path, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let ns = meshd::netns::Netns::open(netns).map_err(std::io::Error::other)?;
    let path = path.to_string();
    ns.run(move || get_here(addr, &path)).map_err(std::io::Error::other)?
}

fn get_here(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query parameter value.
pub fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
