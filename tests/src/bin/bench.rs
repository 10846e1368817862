//! `cargo xtask bench`: what the mesh costs, as ratios against a baseline measured in the same
//! run on the same simulated cluster — never as absolute numbers compared with a threshold.
//!
//! - throughput of one bulk flow, meshed / direct (the same pods unenrolled);
//! - agent CPU seconds per GiB moved (both agents);
//! - connection setup: short connections per second, meshed / direct;
//! - agent memory per idle concurrent flow (RSS growth with N open flows).
//!
//! Each figure is the median of `--runs` runs. Writes `target/bench/report.json`.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use meshd_tests::{cluster::AgentOptions, paths, procs, Agent, Cluster, Pod};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Bytes of the bulk flow.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Short connections for the setup-rate figure.
    #[arg(long, default_value_t = 2000)]
    connections: u32,
    /// Concurrent idle flows for the memory figure.
    #[arg(long, default_value_t = 200)]
    flows: u32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value = "target/bench/report.json")]
    report: std::path::PathBuf,
}

fn testkit(pod: &Pod, args: &[&str]) -> Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (user + system) CPU seconds and RSS KiB of a process.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..].split_whitespace().collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let cpu = (f[11].parse::<f64>()? + f[12].parse::<f64>()?) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
    Ok((cpu, rss.unwrap_or(0)))
}

struct Bench {
    _c: Cluster,
    client: Pod,
    server: Pod,
    agents: Option<(Agent, Agent)>,
}

impl Bench {
    fn new(meshed: bool) -> Self {
        let mut c = Cluster::new(if meshed { "bench-meshed" } else { "bench-direct" });
        let (a, b) = (c.add_node("a"), c.add_node("b"));
        let (client, server) = (c.add_pod("a", "client"), c.add_pod("b", "server"));
        let o = AgentOptions::default();
        let enrolled = |p: &Pod| if meshed { vec![p.clone()] } else { Vec::new() };
        let (ea, eb) = (enrolled(&client), enrolled(&server));
        let agents = (
            Agent::start(&a, Agent::config(&c, &a, &ea.iter().collect::<Vec<_>>(), &o), &o),
            Agent::start(&b, Agent::config(&c, &b, &eb.iter().collect::<Vec<_>>(), &o), &o),
        );
        Self { _c: c, client, server, agents: Some(agents) }
    }

    fn agent_usage(&self) -> Result<(f64, u64)> {
        let (a, b) = self.agents.as_ref().context("agents")?;
        let (ua, ra) = usage(a.pid().context("pid")?)?;
        let (ub, _) = usage(b.pid().context("pid")?)?;
        Ok((ua + ub, ra))
    }

    /// Seconds to move `bytes`, and the agents' CPU seconds meanwhile.
    fn bulk(&self, bytes: u64) -> Result<(f64, f64)> {
        let _sink = procs::spawn_ready(testkit(&self.server, &["sink", "0.0.0.0:9000"]), "sink", "listening");
        let cpu0 = self.agent_usage()?.0;
        let start = Instant::now();
        let dst = format!("{}:9000", self.server.ip);
        procs::run_ok(
            testkit(&self.client, &["source", &dst, "--bytes", &bytes.to_string()]),
            "source",
            Duration::from_secs(600),
        );
        Ok((start.elapsed().as_secs_f64(), self.agent_usage()?.0 - cpu0))
    }

    fn setup_rate(&self, n: u32) -> Result<f64> {
        let _srv =
            procs::spawn_ready(testkit(&self.server, &["serve", "0.0.0.0:9001", "--name", "s"]), "server", "listening");
        let start = Instant::now();
        let out = procs::run_ok(
            testkit(&self.client, &["churn", &format!("{}:9001", self.server.ip), "--count", &n.to_string()]),
            "churn",
            Duration::from_secs(600),
        );
        ensure!(out.trim() == n.to_string(), "churn completed {out}");
        Ok(f64::from(n) / start.elapsed().as_secs_f64())
    }

    /// Agent a's RSS growth (KiB) per open idle flow.
    fn memory_per_flow(&self, n: u32) -> Result<f64> {
        let _sink = procs::spawn_ready(testkit(&self.server, &["sink", "0.0.0.0:9002"]), "sink", "listening");
        let before = self.agent_usage()?.1;
        let dst = format!("{}:9002", self.server.ip);
        let mut clients: Vec<Child> = (0..n)
            .map(|_| {
                let mut cmd = testkit(&self.client, &["source", &dst, "--bytes", "8", "--rate", "1"]);
                cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("spawn idle client")
            })
            .collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_secs(3));
        let after = self.agent_usage()?.1;
        for c in &mut clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(after.saturating_sub(before) as f64 / f64::from(n))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (mut direct_s, mut meshed_s, mut cpu, mut direct_rate, mut meshed_rate) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        eprintln!("bench run {}/{}", run + 1, args.runs);
        let d = Bench::new(false);
        direct_s.push(d.bulk(args.bytes)?.0);
        direct_rate.push(d.setup_rate(args.connections)?);
        drop(d);
        let m = Bench::new(true);
        let (secs, c) = m.bulk(args.bytes)?;
        meshed_s.push(secs);
        cpu.push(c / (args.bytes as f64 / f64::from(1u32 << 30)));
        meshed_rate.push(m.setup_rate(args.connections)?);
    }
    let memory = Bench::new(true).memory_per_flow(args.flows)?;
    let gib = args.bytes as f64 / f64::from(1u32 << 30);
    let (d, m) = (median(direct_s), median(meshed_s));
    let (dr, mr) = (median(direct_rate), median(meshed_rate));
    let cpu = median(cpu);
    let report = json!({
        "runs": args.runs,
        "bulk": { "bytes": args.bytes, "direct_gib_per_s": gib / d, "meshed_gib_per_s": gib / m, "meshed_over_direct": d / m },
        "agent_cpu_seconds_per_gib": cpu,
        "setup": { "connections": args.connections, "direct_per_s": dr, "meshed_per_s": mr, "meshed_over_direct": mr / dr },
        "memory": { "idle_flows": args.flows, "agent_rss_kib_per_flow": memory },
        "data_path": "userspace (this host kernel has no kTLS; the VM tier compares kernel TLS)",
    });
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("bulk flow     meshed/direct throughput {:.2}  ({:.2} vs {:.2} GiB/s)", d / m, gib / m, gib / d);
    println!("agent CPU     {:.2} s per GiB (both agents)", cpu.max(0.0));
    println!("setup         meshed/direct connections per second {:.2}  ({mr:.0} vs {dr:.0}/s)", mr / dr);
    println!("memory        {memory:.1} KiB agent RSS per idle flow ({} flows)", args.flows);
    println!("report        {}", args.report.display());
    Ok(())
}
