//! A two-node cluster with named pods in chosen SPIFFE namespaces, for policy tests: node a's
//! and node b's pods (enrolled or not) behind their agents, policy files applied to both agents,
//! servers whose accepted connections can be counted.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::{cluster::AgentOptions, paths, procs, Agent, Cluster, Pod};

const T: Duration = Duration::from_secs(30);

pub struct Mesh {
    pub c: Cluster,
    pub a: Agent,
    pub b: Agent,
    pub pods: Vec<Pod>,
}

impl Mesh {
    /// Node a: `a_pods` (enrolled with agent a); node b: `b_pods`. Each entry: (name, SPIFFE
    /// namespace, labels, enrolled). Every pod gets `spiffe://cluster.local/ns/<ns>/sa/<name>`.
    pub fn new(label: &str, a_pods: &[(&str, &str, bool)], b_pods: &[(&str, &str, bool)]) -> Self {
        let mut c = Cluster::new(label);
        let (na, nb) = (c.add_node("a"), c.add_node("b"));
        let mut pods = Vec::new();
        let o = AgentOptions::default();
        let mut agents = Vec::new();
        for (node, list) in [(&na, a_pods), (&nb, b_pods)] {
            let created: Vec<(Pod, &str, bool)> =
                list.iter().map(|(name, ns, enrolled)| (c.add_pod(&node.name, name), *ns, *enrolled)).collect();
            let enrolled: Vec<&Pod> = created.iter().filter(|p| p.2).map(|p| &p.0).collect();
            let mut config = Agent::config(&c, node, &enrolled, &o);
            for w in &mut config.workloads {
                let ns = created.iter().find(|p| p.0.name == w.name).map(|p| p.1).unwrap_or("media");
                w.spiffe_id = format!("spiffe://cluster.local/ns/{ns}/sa/{}", w.name);
                if w.name == "packager" {
                    w.labels.insert("app".into(), "packager".into());
                }
            }
            agents.push(Agent::start(node, config, &o));
            pods.extend(created.into_iter().map(|p| p.0));
        }
        let b = agents.pop().expect("agent b");
        let a = agents.pop().expect("agent a");
        Self { c, a, b, pods }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.c.run_dir().join(name);
        std::fs::write(&path, text).expect("write policy");
        path
    }

    /// `meshd policy apply` on both agents; panics unless both accept.
    pub fn apply(&self, path: &Path) {
        for agent in [&self.a, &self.b] {
            let out = agent.meshctl(&["policy", "apply", &path.display().to_string()]);
            assert!(
                out.status.success(),
                "policy apply on {}: {}",
                agent.node.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn serve(&self, pod: &str, port: u16) -> Server {
        Server::start(self.pod(pod), port, &self.c.run_dir().join(format!("{pod}-{port}.log")))
    }

    /// `testkit connect` from `from` to `to:port`: Ok(answer) or Err(stderr).
    pub fn connect(&self, from: &str, to: &str, port: u16) -> Result<String, String> {
        self.pod(from).connect(&format!("{}:{port}", self.pod(to).ip))
    }
}

/// A `testkit serve --log` whose accepted connections can be counted.
pub struct Server {
    _bg: procs::Background,
    log: PathBuf,
}

impl Server {
    pub fn start(pod: &Pod, port: u16, log: &Path) -> Self {
        let mut cmd = pod.command(paths::bin("testkit"));
        let file = std::fs::File::create(log).expect("server log");
        cmd.args(["serve", &format!("0.0.0.0:{port}"), "--name", &format!("{}:{port}", pod.name), "--log"]);
        cmd.stdout(file).stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn server");
        let start = Instant::now();
        while !std::fs::read_to_string(log).unwrap_or_default().contains("listening") {
            assert!(start.elapsed() < T, "server {}:{port} did not start", pod.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { _bg: procs::Background { child, what: "server".into() }, log: log.into() }
    }

    pub fn accepted(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches("accepted").count()
    }
}
