//! The client side, used by `meshd status/enroll/unenroll/policy apply`.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Error, Request, Response};

/// Sends one request and returns the agent's response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, Error> {
    let io = |source| Error::Io { path: socket.into(), source };
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::Connect { path: socket.into(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    let body = serde_json::to_vec(request).map_err(|e| io(std::io::Error::other(e)))?;
    stream.write_all(&body).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io)?;
    serde_json::from_slice(&answer).map_err(|source| Error::Decode { path: socket.into(), source })
}

/// The admin socket to use when none was given: the only one under /run/meshd.
pub fn discover() -> Result<PathBuf, Error> {
    let found: Vec<PathBuf> = std::fs::read_dir("/run/meshd")
        .map(|d| d.flatten().map(|e| e.path().join("admin.sock")).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::NoAgent),
        _ => Err(Error::Ambiguous {
            found: found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        }),
    }
}
