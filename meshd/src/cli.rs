//! The command line. Every flag can also come from the environment variable named in its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "meshd",
    version,
    about = "Transparent, identity-based mTLS for media services, encrypted by the kernel",
    long_about = "meshd is a per-node agent. eBPF programs steer enrolled workloads' outbound TCP to it; it carries \
                  each flow to the destination node's agent over mutually authenticated TLS 1.3 with SPIFFE \
                  identities, then hands the keys to kernel TLS so bulk media is encrypted in the kernel."
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "MESHD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (needs root: BPF, namespaces, cgroups).
    Run(RunArgs),
    /// Check a configuration file and print the effective configuration.
    CheckConfig {
        /// Configuration file (YAML or TOML).
        #[arg(long, short, env = "MESHD_CONFIG")]
        config: PathBuf,
    },
    /// Show what the running agent has loaded: programs, workloads, flows.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Machine-readable output.
        #[arg(long, env = "MESHD_STATUS_JSON")]
        json: bool,
    },
    /// Enroll a workload with the running agent.
    Enroll {
        #[command(flatten)]
        admin: AdminArgs,
        /// Workload name (unique on this node).
        #[arg(long, env = "MESHD_WORKLOAD_NAME")]
        name: String,
        /// cgroup v2 directory of the workload (absolute, or relative to the cgroup v2 root).
        #[arg(long, env = "MESHD_WORKLOAD_CGROUP")]
        cgroup: PathBuf,
        /// Network namespace file of the workload, e.g. /var/run/netns/NAME.
        #[arg(long, env = "MESHD_WORKLOAD_NETNS")]
        netns: PathBuf,
        /// SPIFFE ID of the workload, e.g. spiffe://cluster.local/ns/media/sa/encoder.
        #[arg(long, env = "MESHD_WORKLOAD_SPIFFE_ID")]
        spiffe_id: String,
        /// Labels for policy selection, KEY=VALUE (repeatable; comma-separated in the variable).
        #[arg(long = "label", env = "MESHD_WORKLOAD_LABELS", value_delimiter = ',', value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Unenroll a workload: its connections go direct again.
    Unenroll {
        #[command(flatten)]
        admin: AdminArgs,
        /// Workload name, as enrolled.
        #[arg(long, env = "MESHD_WORKLOAD_NAME")]
        name: String,
    },
    /// The development certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Authorization policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (YAML or TOML).
    #[arg(long, short, env = "MESHD_CONFIG")]
    pub config: PathBuf,
    /// Load this eBPF object instead of the one built into the binary.
    #[arg(long, env = "MESHD_EBPF_OBJECT")]
    pub ebpf_object: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The agent's admin socket.
    #[arg(long, env = "MESHD_ADMIN_SOCKET", conflicts_with = "node")]
    pub admin_socket: Option<PathBuf>,
    /// Node name, for the default admin socket /run/meshd/NODE/admin.sock.
    #[arg(long, env = "MESHD_NODE")]
    pub node: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a development CA (refuses to overwrite one unless --force).
    Init {
        /// Folder for ca.crt and ca.key (mode 0600).
        #[arg(long, env = "MESHD_CA_DIR")]
        dir: PathBuf,
        /// SPIFFE trust domain of every identity the CA issues.
        #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// Replace an existing CA (every SVID it issued stops being trusted).
        #[arg(long, env = "MESHD_CA_FORCE")]
        force: bool,
    },
    /// Issue an SVID into a folder (tls.crt, tls.key, ca.crt), e.g. for the files identity source.
    Issue {
        /// The CA's folder (from `meshd ca init`).
        #[arg(long, env = "MESHD_CA_DIR")]
        dir: PathBuf,
        /// The SVID's SPIFFE ID.
        #[arg(long, env = "MESHD_SPIFFE_ID")]
        spiffe_id: String,
        /// Output folder.
        #[arg(long, env = "MESHD_SVID_OUT")]
        out: PathBuf,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, env = "MESHD_SVID_TTL", default_value = "1h")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and apply it to the running agent atomically.
    Apply {
        #[command(flatten)]
        admin: AdminArgs,
        /// Policy file (YAML).
        #[arg(env = "MESHD_POLICY_FILE")]
        file: PathBuf,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))
}

impl AdminArgs {
    /// The admin socket: given, derived from the node name, or the only one on this host.
    pub fn socket(&self) -> Result<PathBuf, crate::admin::Error> {
        match (&self.admin_socket, &self.node) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(node)) if !crate::config::valid_name(node) => Err(crate::admin::Error::BadNode(node.clone())),
            (None, Some(node)) => Ok(crate::config::default_admin_socket(node)),
            (None, None) => crate::admin::client::discover(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("app=enc").unwrap(), ("app".into(), "enc".into()));
        assert!(parse_label("app").is_err());
    }
}
