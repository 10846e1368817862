//! Network namespaces. A workload (a Kubernetes pod) lives in its own network namespace; the
//! agent serves it from outside, the way a per-node proxy serves pods without a sidecar: a
//! worker thread enters the namespace once and creates sockets there on request. A socket stays
//! in the namespace it was created in, so the agent's tokio runtime can then use it normally.

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "open network namespace {path}: {source} (is the path right? `ip netns add` puts them under /var/run/netns)"
    )]
    Open { path: PathBuf, source: std::io::Error },
    #[error("enter network namespace {path}: {source} ({})", enter_hint(*source))]
    Enter { path: PathBuf, source: nix::Error },
    #[error("network namespace worker for {path} is gone")]
    WorkerGone { path: PathBuf },
    #[error("{op} {addr} in network namespace {path}: {source}")]
    Socket { op: &'static str, addr: SocketAddr, path: PathBuf, source: std::io::Error },
    #[error("read the network namespace cookie of a socket: {0}")]
    Cookie(std::io::Error),
}

fn enter_hint(e: nix::Error) -> &'static str {
    match e {
        nix::Error::EINVAL => "is it a network namespace? give /var/run/netns/NAME or /proc/PID/ns/net",
        _ => "the agent needs CAP_SYS_ADMIN",
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in one network namespace, creating sockets there on request.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/pod-a` or `/proc/PID/ns/net`) and
    /// starts its worker thread.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|source| Error::Open { path: path.into(), source })?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = format!("netns:{}", path.file_name().unwrap_or_default().to_string_lossy());
        let owned = path.to_path_buf();
        thread::Builder::new()
            .name(name)
            .spawn(move || {
                let entered = setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| Error::Enter { path: owned, source });
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })
            .map_err(|source| Error::Open { path: path.into(), source })?;
        ready_rx.recv().map_err(|_| Error::WorkerGone { path: path.into() })??;
        Ok(Self { path: path.into(), jobs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the namespace's thread and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).map_err(|_| Error::WorkerGone { path: self.path.clone() })?;
        rx.recv().map_err(|_| Error::WorkerGone { path: self.path.clone() })
    }

    /// A listening TCP socket bound to `addr` inside the namespace, non-blocking, carrying the
    /// agent's socket mark. IPv6 listeners are IPv6-only.
    pub fn listen(&self, addr: SocketAddr, mark: u32) -> Result<std::net::TcpListener, Error> {
        let path = self.path.clone();
        self.run(move || {
            let sock = new_socket(addr, mark).and_then(|s| {
                s.set_reuse_address(true)?;
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s)
            });
            sock.map(Into::into).map_err(|source| Error::Socket { op: "listen on", addr, path, source })
        })?
    }

    /// An unconnected TCP socket for connecting to `addr` from inside the namespace.
    pub fn socket_for(&self, addr: SocketAddr, mark: u32) -> Result<Socket, Error> {
        let path = self.path.clone();
        self.run(move || {
            new_socket(addr, mark).map_err(|source| Error::Socket { op: "create socket for", addr, path, source })
        })?
    }
}

fn new_socket(addr: SocketAddr, mark: u32) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_mark(mark)?;
    sock.set_tcp_nodelay(true)?;
    Ok(sock)
}

/// The cookie of the network namespace a socket lives in (`SO_NETNS_COOKIE`, Linux ≥ 5.14).
pub fn netns_cookie(sock: &impl AsRawFd) -> Result<u64, Error> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is a valid u64.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len)
    };
    if rc != 0 {
        return Err(Error::Cookie(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}
