//! The media scenario: two nodes, a `source` pod on node a and a `receiver` pod on node b, an
//! agent on each node logging JSON (so tests read its records, not its prose).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use super::ffmpeg::{self, Proc};
use crate::{cluster::AgentOptions, Agent, Cluster, Node, Pod};

/// Two nodes, two pods, two agents. Fields drop in order: agents, then the cluster.
pub struct TwoNodes {
    pub agent_a: Agent,
    pub agent_b: Agent,
    /// On node a (10.100.0.x).
    pub source: Pod,
    /// On node b (10.100.1.x).
    pub receiver: Pod,
    pub opts: AgentOptions,
    /// A folder for this scenario's media files and process logs (inside the cluster's run
    /// folder, removed with it).
    pub dir: PathBuf,
    pub cluster: Cluster,
}

impl TwoNodes {
    /// Builds the cluster and starts both agents (ready when this returns).
    pub fn start(label: &str) -> Self {
        let opts = AgentOptions { env: vec![("MESHD_LOG_FORMAT".into(), "json".into())], ..AgentOptions::default() };
        let mut cluster = Cluster::new(label);
        let a = cluster.add_node("a");
        let b = cluster.add_node("b");
        let source = cluster.add_pod("a", "source");
        let receiver = cluster.add_pod("b", "receiver");
        let agent_a = Agent::start(&a, Agent::config(&cluster, &a, &[&source], &opts), &opts);
        let agent_b = Agent::start(&b, Agent::config(&cluster, &b, &[&receiver], &opts), &opts);
        let dir = cluster.run_dir().join("media");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self { agent_a, agent_b, source, receiver, opts, dir, cluster }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.cluster.node(name)
    }

    /// A path in the scenario's folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn source_id(&self) -> String {
        self.source.spiffe_id(&self.cluster.trust_domain)
    }

    pub fn receiver_id(&self) -> String {
        self.receiver.spiffe_id(&self.cluster.trust_domain)
    }

    /// Starts `ffmpeg ARGS` in `pod` (with [`ffmpeg::COMMON`]); its stderr goes to `<what>.log`.
    pub fn ffmpeg(&self, pod: &Pod, what: &str, args: &[String]) -> Result<Proc> {
        let mut cmd = pod.command("ffmpeg");
        cmd.args(ffmpeg::COMMON).args(args);
        self.spawn(cmd, what)
    }

    /// Starts any command; its stderr goes to `<what>.log` in the scenario folder.
    pub fn spawn(&self, cmd: Command, what: &str) -> Result<Proc> {
        Proc::spawn(cmd, what, &self.file(&format!("{}.log", what.replace(' ', "-"))))
    }

    /// Starts node a's agent again with the same configuration (after `agent_a.stop()` or
    /// `agent_a.kill()`), waiting until it is ready. Its log continues in the same file.
    pub fn start_agent_a(&mut self) {
        let node = self.cluster.node("a").clone();
        let config = self.agent_a.config.clone();
        self.agent_a = Agent::start(&node, config, &self.opts);
    }

    /// Processes still running in the pods ("pid cmdline"), for leak checks.
    pub fn pod_processes(&self) -> Vec<String> {
        [&self.source, &self.receiver].iter().flat_map(|p| processes_in(&p.cgroup)).collect()
    }
}

/// Processes in cgroup `dir` ("pid cmdline").
pub fn processes_in(dir: &Path) -> Vec<String> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs
        .split_whitespace()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline: Vec<String> =
                cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            format!("{pid} {}", cmdline.join(" ").trim())
        })
        .collect()
}
