//! The agent's local admin socket: a Unix socket speaking one JSON request and one JSON
//! response per connection. `meshd status`, `enroll`, `unenroll` and `policy apply` are clients.
//! Only root can connect (the socket is created mode 0600; a folder meshd creates for it is 0700).

pub mod client;
pub mod http;
pub mod protocol;
pub mod server;

use std::path::PathBuf;

pub use protocol::{Request, Response};

fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "the admin socket is for root only: run the command as root",
        _ => "is `meshd run` running on this node?",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to the agent's admin socket {path}: {source} ({})", connect_hint(source))]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talk to the agent over {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent's answer over {path} is not valid: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error("no admin socket given and several found ({found}); pass --admin-socket or --node")]
    Ambiguous { found: String },
    #[error(
        "no meshd agent appears to be running: no admin socket under /run/meshd (start one with `meshd run`, or \
         pass --admin-socket if it uses another path)"
    )]
    NoAgent,
    #[error("--node {0:?}: a node name is {rule}", rule = crate::config::NAME_RULE)]
    BadNode(String),
    #[error("bind admin socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error(
        "bind the admin HTTP listener {addr}: {source} (set admin.http to another address, or null to disable it)"
    )]
    HttpBind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("the agent refused: {0}")]
    Refused(String),
}
