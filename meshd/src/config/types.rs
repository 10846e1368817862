//! The configuration's types. Durations are written like `30s`, `1h`, `90m`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name: names the pin folder, the admin socket and log lines.
    pub node: String,
    /// SPIFFE trust domain of every identity in this mesh.
    pub trust_domain: String,
    #[serde(default)]
    pub ports: Ports,
    #[serde(default)]
    pub admin: Admin,
    /// Mount point of the BPF filesystem (mounted there if missing).
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// cgroup v2 mount point; detected from /proc/self/mountinfo when absent.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// The agent's own cgroup (where getsockopt SO_ORIGINAL_DST is answered); the cgroup the
    /// agent runs in when absent.
    #[serde(default)]
    pub agent_cgroup: Option<PathBuf>,
    pub identity: IdentityConfig,
    #[serde(default)]
    pub mesh: Mesh,
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
    /// How flows encrypt their bulk data.
    #[serde(default)]
    pub data_path: DataPathMode,
    /// Close a flow after this long without data in either direction; none by default (media
    /// streams may pause for long).
    #[serde(default, with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Records sent under one kernel TLS key before the flow is rekeyed (kernels with TLS 1.3
    /// KeyUpdate support) or closed (older kernels). Default 2^24, below AES-GCM's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ktls_record_limit: Option<u64>,
    /// What happens to enrolled workloads when the agent exits (SIGTERM/SIGINT). `keep_closed`
    /// (default): the interception programs stay attached, so meshed connections are refused
    /// until an agent runs again — never sent in plaintext; a restarted agent takes over with no
    /// gap. `detach`: the programs are detached and the pins removed, workloads connect directly
    /// (an uninstall).
    #[serde(default)]
    pub on_exit: OnExit,
    /// Authorization policy file, applied at start-up and on SIGHUP.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// OpenTelemetry trace export (one span tree per flow); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<Otlp>,
}

fn default_bpffs() -> PathBuf {
    PathBuf::from("/sys/fs/bpf")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    /// Capture listener in each workload namespace (127.0.0.1 and ::1): redirected outbound flows.
    #[serde(default = "default_capture")]
    pub capture: u16,
    /// Inbound mesh listener in each workload namespace (all addresses): TLS from other agents.
    #[serde(default = "default_inbound")]
    pub inbound: u16,
}

fn default_capture() -> u16 {
    15001
}
fn default_inbound() -> u16 {
    15008
}

impl Default for Ports {
    fn default() -> Self {
        Self { capture: default_capture(), inbound: default_inbound() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Unix socket for `meshd status/enroll/unenroll/policy`; `/run/meshd/<node>/admin.sock`
    /// when absent.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// HTTP listener for /metrics, /healthz, /readyz, in the agent's own network namespace:
    /// node-local `127.0.0.1:15020` when absent; `null` disables it.
    #[serde(default = "default_admin_http")]
    pub http: Option<SocketAddr>,
    /// Distinct (source, destination) identity pairs that get their own metric series; later
    /// pairs are counted under `other`. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_identity_pairs: Option<usize>,
}

/// Where the admin HTTP listener binds by default.
pub const DEFAULT_ADMIN_HTTP: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 15020));

fn default_admin_http() -> Option<SocketAddr> {
    Some(DEFAULT_ADMIN_HTTP)
}

impl Default for Admin {
    fn default() -> Self {
        Self { socket: None, http: default_admin_http(), max_identity_pairs: None }
    }
}

/// OTLP/HTTP (protobuf) trace export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// Collector base URL, e.g. `http://otel-collector:4318` (spans go to `/v1/traces`).
    pub endpoint: String,
    /// How long finished spans wait to be sent in a batch. Default 2s.
    #[serde(default = "default_otlp_interval", with = "duration")]
    pub export_interval: Duration,
}

fn default_otlp_interval() -> Duration {
    Duration::from_secs(2)
}

/// Where SVIDs come from: exactly one of the sources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The built-in development CA (`meshd ca init`): SVIDs issued on demand and renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_ca: Option<DevCaConfig>,
    /// SVID files per workload: `<dir>/<workload name>/{tls.crt,tls.key,ca.crt}`, the layout
    /// cert-manager's csi-driver-spiffe writes; watched for changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevCaConfig {
    pub dir: PathBuf,
    #[serde(default = "default_ttl", with = "duration")]
    pub svid_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    pub dir: PathBuf,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    /// Destinations in the mesh: enrolled workloads' connections to these are redirected.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// Never redirected, even inside a meshed prefix.
    #[serde(default)]
    pub exclude: Vec<Destination>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// `10.100.0.0/16`, `fd00::/64`, or a bare address (a /32 or /128).
    pub cidr: String,
    /// `80`, `1000-2000`; all ports when absent.
    #[serde(default)]
    pub ports: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Unique name on this node (a pod name).
    pub name: String,
    /// cgroup v2 directory, absolute or relative to the cgroup v2 root.
    pub cgroup: PathBuf,
    /// Network namespace file (`/var/run/netns/NAME` or `/proc/PID/ns/net`).
    pub netns: PathBuf,
    pub spiffe_id: String,
    /// Kubernetes-style labels, for policy selection.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPathMode {
    /// Kernel TLS when the kernel has it, userspace rustls otherwise (decided per flow).
    #[default]
    Auto,
    /// Kernel TLS only: flows fail (closed) where it is unavailable.
    Ktls,
    /// Always userspace rustls.
    Userspace,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    #[default]
    KeepClosed,
    Detach,
}

/// A parsed `Destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedDestination {
    pub addr: IpAddr,
    pub len: u8,
    pub ports: (u16, u16),
}

pub use duration::parse as parse_duration;

pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// Parses `90s`, `15m`, `1h`, `2d`, `500ms`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 15m, 1h"))?;
        let scale = match unit {
            "ms" => return Ok(Duration::from_millis(n)),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(format!("invalid duration {text:?}: unit must be ms, s, m, h or d")),
        };
        n.checked_mul(scale)
            .filter(|s| *s <= 100 * 365 * 86400)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {text:?} is too long (at most 100 years)"))
    }
}

pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| super::duration::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
