//! A node's meshd agent, run as the real binary in the node's namespace and its own cgroup.

use std::{
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use meshd::config::{Config, DataPathMode, Destination, DevCaConfig, IdentityConfig, WorkloadConfig};

use super::{command_in, Cluster, Node, Pod};
use crate::paths;

/// Knobs a test may turn on an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub data_path: DataPathMode,
    pub on_exit: meshd::config::OnExit,
    /// `RUST_LOG` for the agent.
    pub log: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { data_path: DataPathMode::Auto, on_exit: Default::default(), log: "info".into(), env: Vec::new() }
    }
}

/// A running agent. Dropping it stops it (SIGTERM, then SIGKILL after 10 s).
pub struct Agent {
    child: Option<Child>,
    pub node: Node,
    pub config: Config,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Agent {
    /// The configuration of `node`'s agent enrolling `pods`: the cluster's pod prefixes are
    /// meshed; identities come from the cluster's development CA.
    pub fn config(cluster: &Cluster, node: &Node, pods: &[&Pod], opts: &AgentOptions) -> Config {
        let dir = node.run_dir().join(format!("agent-{}", node.name));
        Config {
            node: node.agent_name.clone(),
            trust_domain: cluster.trust_domain.clone(),
            ports: Default::default(),
            // Each node is its own network namespace: 127.0.0.1:15020 in each does not clash.
            admin: meshd::config::Admin {
                socket: Some(dir.join("admin.sock")),
                http: Some(meshd::config::DEFAULT_ADMIN_HTTP),
                max_identity_pairs: None,
            },
            bpffs: "/sys/fs/bpf".into(),
            cgroup_root: None,
            agent_cgroup: Some(node.agent_cgroup.clone()),
            identity: IdentityConfig {
                dev_ca: Some(DevCaConfig { dir: cluster.ca_dir(), svid_ttl: Duration::from_secs(3600) }),
                files: None,
            },
            mesh: meshd::config::Mesh {
                destinations: vec![
                    Destination { cidr: "10.100.0.0/16".into(), ports: None },
                    Destination { cidr: "fd00:100::/32".into(), ports: None },
                ],
                exclude: Vec::new(),
            },
            workloads: pods
                .iter()
                .map(|p| WorkloadConfig {
                    name: p.name.clone(),
                    cgroup: p.cgroup.clone(),
                    netns: p.netns_path(),
                    spiffe_id: p.spiffe_id(&cluster.trust_domain),
                    labels: Default::default(),
                })
                .collect(),
            data_path: opts.data_path,
            idle_timeout: None,
            ktls_record_limit: None,
            on_exit: opts.on_exit,
            policy: None,
            otlp: None,
        }
    }

    /// Starts the agent with `config` and waits until it reports ready.
    pub fn start(node: &Node, config: Config, opts: &AgentOptions) -> Self {
        let dir = node.run_dir().join(format!("agent-{}", node.name));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let config_path = dir.join("meshd.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config).expect("serialize config")).expect("write config");
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open agent log");
        let mut cmd = command_in(&node.netns_path(), &node.agent_cgroup, paths::bin("meshd"));
        cmd.args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", &opts.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn meshd run");
        let mut agent = Self { child: Some(child), node: node.clone(), config, config_path, log_path };
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// Polls `meshd status --json` until the agent says it is ready.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                panic!("agent {} exited ({exit}) before it was ready; log:\n{}", self.node.name, self.log_tail(40));
            }
            if let Some(status) = self.try_status() {
                if status["ready"] == serde_json::Value::Bool(true) {
                    return;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "agent {} not ready after {timeout:?}; log:\n{}",
                self.node.name,
                self.log_tail(40)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `meshd status --json`, or `None` if the agent does not answer.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let out = std::process::Command::new(paths::bin("meshd"))
            .args(["status", "--json", "--admin-socket"])
            .arg(self.config.admin_socket())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> serde_json::Value {
        self.try_status()
            .unwrap_or_else(|| panic!("agent {} does not answer; log:\n{}", self.node.name, self.log_tail(40)))
    }

    /// Runs another `meshd` subcommand against this agent's admin socket.
    pub fn meshctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(paths::bin("meshd"))
            .args(args)
            .arg("--admin-socket")
            .arg(self.config.admin_socket())
            .output()
            .expect("run meshd")
    }

    /// Waits (up to `timeout`) until the log contains `needle` at least `count` times; returns
    /// the log either way, so the caller's assertion shows it.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count || start.elapsed() >= timeout {
                return log;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// GETs `path` from the agent's admin HTTP listener (inside the node's namespace).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.config.admin.http.expect("the agent's admin HTTP listener is configured");
        crate::http::get(&self.node.netns_path(), addr, path)
            .unwrap_or_else(|e| panic!("GET {path} from agent {}: {e}; log:\n{}", self.node.name, self.log_tail(20)))
    }

    /// The agent's `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
