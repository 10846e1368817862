//! The simulated cluster: one kernel, many network namespaces.
//!
//! ```text
//!   pod netns (eth0 10.100.N.x)           pod netns
//!        │ veth                                │ veth
//!   node netns "a" (cbr0 10.100.0.1)     node netns "b" (cbr0 10.100.1.1)
//!        │ wan0 10.99.0.1                        │ wan0 10.99.0.2
//!        └────────── wire netns (br0) ─────────┘
//! ```
//! Each node routes the other nodes' pod prefixes (`10.100.N.0/24`, `fd00:100:N::/64`) over
//! the wire. Pods live in their own namespace and cgroup (`<cgroup2>/meshd-<id>/pod-<name>`);
//! an agent runs in its node's namespace and its own cgroup. Names carry the creating
//! process's pid, so a later run can sweep what a crashed run left behind.

mod agent;
mod net;
mod process;
mod sweep;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

pub use agent::{Agent, AgentOptions};
pub use process::command_in;

use crate::paths;

/// A simulated cluster. Dropping it removes every namespace, cgroup and process it made.
pub struct Cluster {
    pub id: String,
    pub trust_domain: String,
    run_dir: PathBuf,
    cgroup_dir: PathBuf,
    wire: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
}

/// A node: a network namespace with an uplink to the wire and a bridge for its pods.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub index: u8,
    /// Network namespace name (`ip netns`).
    pub netns: String,
    /// Address on the wire.
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// cgroup for processes on the node itself (not in a pod).
    pub host_cgroup: PathBuf,
    /// cgroup the node's agent runs in.
    pub agent_cgroup: PathBuf,
    /// The agent's node name (pins, admin socket): unique per cluster.
    pub agent_name: String,
    run_dir: PathBuf,
    pods: u8,
}

/// A pod: its own network namespace and cgroup, behind its node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub cgroup: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Creates an empty cluster (the wire namespace), after sweeping leftovers of dead runs.
    pub fn new(label: &str) -> Self {
        crate::require::root();
        crate::require::program("ip", "iproute2");
        sweep::stale();
        let id = format!("mt{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let root = meshd::cgroup::cgroup2_root().expect("find the cgroup v2 hierarchy");
        let cgroup_dir = root.join(format!("meshd-{id}"));
        std::fs::create_dir_all(&cgroup_dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cgroup_dir.display()));
        let run_dir = paths::run_dir(&id);
        std::fs::create_dir_all(&run_dir).unwrap_or_else(|e| panic!("create {}: {e}", run_dir.display()));
        std::fs::write(run_dir.join("label"), label).ok();
        let wire = format!("{id}-wire");
        let cluster = Self {
            id,
            trust_domain: "cluster.local".into(),
            run_dir,
            cgroup_dir,
            wire: wire.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
        };
        net::add_netns(&wire);
        net::ip(&wire, &["link", "add", "br0", "type", "bridge"]);
        net::ip(&wire, &["link", "set", "br0", "up"]);
        cluster
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Adds a node named `name` (e.g. "a").
    pub fn add_node(&mut self, name: &str) -> Node {
        let index = u8::try_from(self.nodes.len()).expect("at most 250 nodes");
        let netns = format!("{}-{name}", self.id);
        let node = Node {
            name: name.into(),
            index,
            netns: netns.clone(),
            ip: Ipv4Addr::new(10, 99, 0, index + 1),
            ip6: format!("fd00:99::{}", index + 1).parse().expect("ipv6"),
            host_cgroup: self.make_cgroup(&format!("node-{name}")),
            agent_cgroup: self.make_cgroup(&format!("agent-{name}")),
            agent_name: netns.clone(),
            run_dir: self.run_dir.clone(),
            pods: 0,
        };
        net::add_node(&self.wire, &node);
        for other in &self.nodes {
            net::route_between(&node, other);
        }
        self.nodes.push(node.clone());
        node
    }

    /// Adds a pod named `name` on `node`.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Pod {
        let n = self.nodes.iter_mut().find(|n| n.name == node).unwrap_or_else(|| panic!("no node {node}"));
        n.pods += 1;
        let host = n.pods + 1;
        let pod = Pod {
            name: name.into(),
            node: node.into(),
            netns: format!("{}-{name}", self.id),
            ip: Ipv4Addr::new(10, 100, n.index, host),
            ip6: format!("fd00:100:{}::{host}", n.index).parse().expect("ipv6"),
            cgroup: PathBuf::new(),
        };
        let node = n.clone();
        let pod = Pod { cgroup: self.make_cgroup(&format!("pod-{name}")), ..pod };
        net::add_pod(&node, &pod, host);
        self.pods.push(pod.clone());
        pod
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// A development CA shared by the cluster's agents (created on first use).
    pub fn ca_dir(&self) -> PathBuf {
        let dir = self.run_dir.join("ca");
        if !dir.join("ca.crt").exists() {
            let status = Command::new(paths::bin("meshd"))
                .args(["ca", "init", "--trust-domain", &self.trust_domain, "--dir"])
                .arg(&dir)
                .status()
                .expect("run meshd ca init");
            assert!(status.success(), "meshd ca init --dir {} failed", dir.display());
        }
        dir
    }

    fn make_cgroup(&self, name: &str) -> PathBuf {
        let dir = self.cgroup_dir.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        dir
    }
}

impl Node {
    /// Path of the node's network namespace.
    pub fn netns_path(&self) -> PathBuf {
        net::netns_path(&self.netns)
    }

    /// A command run on the node itself (node namespace, node host cgroup).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.netns_path(), &self.host_cgroup, program)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `meshd run` on the node with `config` written to `path`, to its end (for starts that
    /// must fail).
    pub fn run_agent_to_end(&self, config: &meshd::config::Config, path: &Path) -> std::process::Output {
        std::fs::write(path, serde_yaml::to_string(config).expect("serialize config")).expect("write config");
        let mut cmd = self.command(paths::bin("meshd"));
        cmd.args(["run", "--config"]).arg(path);
        crate::procs::run(cmd, "meshd run", std::time::Duration::from_secs(30))
    }
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        net::netns_path(&self.netns)
    }

    /// A command run inside the pod (its namespace and cgroup).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.netns_path(), &self.cgroup, program)
    }

    /// `testkit connect addr` from the pod (3 s connect timeout): the server's answer, or the
    /// client's error output.
    pub fn connect(&self, addr: &str) -> Result<String, String> {
        let mut cmd = self.command(paths::bin("testkit"));
        cmd.args(["connect", addr, "--timeout-secs", "3"]);
        let out = crate::procs::run(cmd, "client", std::time::Duration::from_secs(30));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The pod's SPIFFE ID in the conventional Kubernetes form (namespace "media", service
    /// account = pod name).
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/ns/media/sa/{}", self.name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("MESHD_KEEP_CLUSTER").is_some() {
            eprintln!("MESHD_KEEP_CLUSTER set: leaving cluster {} in place", self.id);
            return;
        }
        sweep::remove_cluster(&self.id, &self.cgroup_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
