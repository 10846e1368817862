//! A small TCP tool run inside simulated pods by the tests and the demo.
//!
//! - `serve ADDR --name N`: answers every connection with "N\n" and closes (tells a test *which*
//!   server answered).
//! - `connect ADDR [--mark M] [--send TEXT]`: connects, optionally sends, prints what it gets.
//! - `sink ADDR`: for each connection, reads to EOF and answers with the SHA-256 and length.
//! - `source ADDR --bytes N [--seed S]`: sends N deterministic bytes, half-closes, prints the
//!   sink's answer; `expect --bytes N --seed S` prints what that answer must be.
//! - `churn ADDR --count N`: N short connections in a row, each reading the server's answer.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meshd_tests::pattern::Pattern;
use sha2::{Digest, Sha256};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve {
        addr: SocketAddr,
        #[arg(long)]
        name: String,
        /// Print "accepted PEER" for every connection.
        #[arg(long)]
        log: bool,
    },
    /// Tries COUNT connections, each reading the server's answer; prints "ok=N failed=M".
    Probe {
        addr: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value = "2000")]
        timeout_ms: u64,
    },
    Connect {
        addr: SocketAddr,
        #[arg(long)]
        mark: Option<u32>,
        #[arg(long)]
        send: Option<String>,
        /// Bind this local port before connecting.
        #[arg(long)]
        bind_port: Option<u16>,
        #[arg(long, default_value = "10")]
        timeout_secs: u64,
    },
    Sink {
        addr: SocketAddr,
    },
    Source {
        addr: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value = "1")]
        seed: u64,
        /// Pace the stream to this many bytes per second.
        #[arg(long)]
        rate: Option<u64>,
    },
    Expect {
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value = "1")]
        seed: u64,
    },
    Churn {
        addr: SocketAddr,
        #[arg(long)]
        count: u32,
    },
    /// Accepts connections, reads one byte, then resets the connection (SO_LINGER 0).
    Reset {
        addr: SocketAddr,
    },
    /// Accepts one connection, reads it to the end, prints "eof BYTES" or "error KIND after BYTES".
    Recv {
        addr: SocketAddr,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve { addr, name, log } => serve(addr, &name, log),
        Cmd::Probe { addr, count, timeout_ms } => {
            let (mut ok, mut failed) = (0u32, 0u32);
            let t = Duration::from_millis(timeout_ms);
            for _ in 0..count {
                let answered = TcpStream::connect_timeout(&addr, t).and_then(|mut s| {
                    s.set_read_timeout(Some(t))?;
                    let mut line = String::new();
                    BufReader::new(&mut s).read_line(&mut line)?;
                    if line.is_empty() {
                        return Err(std::io::Error::other("closed without an answer"));
                    }
                    Ok(())
                });
                match answered {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            println!("ok={ok} failed={failed}");
            Ok(())
        }
        Cmd::Connect { addr, mark, send, bind_port, timeout_secs } => {
            connect(addr, mark, send, bind_port, timeout_secs)
        }
        Cmd::Sink { addr } => sink(addr),
        Cmd::Source { addr, bytes, seed, rate } => source(addr, bytes, seed, rate),
        Cmd::Expect { bytes, seed } => {
            let mut h = Sha256::new();
            let mut left = bytes;
            let mut gen = Pattern::new(seed);
            let mut buf = vec![0u8; 1 << 16];
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                gen.fill(&mut buf[..n]);
                h.update(&buf[..n]);
                left -= n as u64;
            }
            println!("{} {bytes}", hex(&h.finalize()));
            Ok(())
        }
        Cmd::Recv { addr } => {
            let listener = bind(addr)?;
            println!("listening {addr}");
            std::io::stdout().flush()?;
            let (mut s, _) = listener.accept()?;
            let (mut buf, mut total) = (vec![0u8; 1 << 16], 0u64);
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        println!("eof {total}");
                        return Ok(());
                    }
                    Ok(n) => total += n as u64,
                    Err(e) => {
                        println!("error {:?} after {total}", e.kind());
                        return Ok(());
                    }
                }
            }
        }
        Cmd::Reset { addr } => {
            let listener = bind(addr)?;
            println!("listening {addr}");
            std::io::stdout().flush()?;
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let mut one = [0u8; 1];
                let _ = s.read(&mut one);
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            }
            Ok(())
        }
        Cmd::Churn { addr, count } => {
            for i in 0..count {
                let mut s = TcpStream::connect(addr).with_context(|| format!("connection {i} to {addr}"))?;
                let mut line = String::new();
                BufReader::new(&mut s).read_line(&mut line).with_context(|| format!("read answer {i}"))?;
                if line.is_empty() {
                    bail!("connection {i}: server closed without answering");
                }
            }
            println!("{count}");
            Ok(())
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))
}

fn serve(addr: SocketAddr, name: &str, log: bool) -> Result<()> {
    let listener = bind(addr)?;
    println!("listening {addr}");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        if log {
            println!("accepted {}", s.peer_addr().map(|a| a.to_string()).unwrap_or_default());
            std::io::stdout().flush()?;
        }
        let _ = s.write_all(format!("{name}\n").as_bytes());
    }
    Ok(())
}

fn connect(
    addr: SocketAddr,
    mark: Option<u32>,
    send: Option<String>,
    bind_port: Option<u16>,
    timeout: u64,
) -> Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if let Some(m) = mark {
        sock.set_mark(m).context("set SO_MARK")?;
    }
    if let Some(port) = bind_port {
        let any: SocketAddr =
            if addr.is_ipv4() { ([0, 0, 0, 0], port).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, port).into() };
        sock.set_reuse_address(true)?;
        sock.bind(&any.into()).with_context(|| format!("bind local port {port}"))?;
    }
    sock.connect_timeout(&addr.into(), Duration::from_secs(timeout)).with_context(|| format!("connect to {addr}"))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(timeout)))?;
    if let Some(text) = send {
        s.write_all(text.as_bytes())?;
        s.shutdown(Shutdown::Write)?;
    }
    let mut out = String::new();
    s.read_to_string(&mut out).with_context(|| format!("read from {addr}"))?;
    print!("{out}");
    Ok(())
}

fn sink(addr: SocketAddr) -> Result<()> {
    let listener = bind(addr)?;
    println!("listening {addr}");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        total += n as u64;
                    }
                    Err(_) => return,
                }
            }
            let _ = s.write_all(format!("{} {total}\n", hex(&h.finalize())).as_bytes());
        });
    }
    Ok(())
}

fn source(addr: SocketAddr, bytes: u64, seed: u64, rate: Option<u64>) -> Result<()> {
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    let mut gen = Pattern::new(seed);
    let mut buf = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        gen.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).context("send")?;
        left -= n as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64((bytes - left) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    s.shutdown(Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("read the sink's answer")?;
    print!("{out}");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
