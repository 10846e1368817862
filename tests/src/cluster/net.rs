//! `ip` commands building the topology. Failures panic with the command and its stderr: a
//! harness that cannot build its network must stop the test, loudly.

use std::{path::PathBuf, process::Command};

use super::{Node, Pod};

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Runs `ip -n NETNS ARGS…` (or in the host namespace when `netns` is empty).
pub fn ip(netns: &str, args: &[&str]) {
    let mut cmd = Command::new("ip");
    if !netns.is_empty() {
        cmd.args(["-n", netns]);
    }
    let out = cmd.args(args).output().unwrap_or_else(|e| panic!("run ip: {e}"));
    assert!(out.status.success(), "ip -n {netns} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

pub fn sysctl(netns: &str, key: &str, value: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .unwrap_or_else(|e| panic!("run sysctl: {e}"));
    assert!(out.status.success(), "sysctl {key}={value} in {netns}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn add_netns(name: &str) {
    ip("", &["netns", "add", name]);
    ip(name, &["link", "set", "lo", "up"]);
}

/// Creates the node namespace, its uplink to the wire and its pod bridge.
pub fn add_node(wire: &str, node: &Node) {
    let ns = node.netns.as_str();
    add_netns(ns);
    let wire_end = format!("n{}", node.index);
    ip(ns, &["link", "add", "wan0", "type", "veth", "peer", "name", &wire_end, "netns", wire]);
    ip(wire, &["link", "set", &wire_end, "master", "br0", "up"]);
    ip(ns, &["addr", "add", &format!("{}/24", node.ip), "dev", "wan0"]);
    ip(ns, &["addr", "add", &format!("{}/64", node.ip6), "dev", "wan0", "nodad"]);
    ip(ns, &["link", "set", "wan0", "up"]);
    ip(ns, &["link", "add", "cbr0", "type", "bridge"]);
    ip(ns, &["addr", "add", &format!("10.100.{}.1/24", node.index), "dev", "cbr0"]);
    ip(ns, &["addr", "add", &format!("fd00:100:{}::1/64", node.index), "dev", "cbr0", "nodad"]);
    ip(ns, &["link", "set", "cbr0", "up"]);
    sysctl(ns, "net.ipv4.ip_forward", "1");
    sysctl(ns, "net.ipv6.conf.all.forwarding", "1");
}

/// Routes each node's pod prefixes over the wire to the other.
pub fn route_between(a: &Node, b: &Node) {
    for (from, to) in [(a, b), (b, a)] {
        ip(&from.netns, &["route", "add", &format!("10.100.{}.0/24", to.index), "via", &to.ip.to_string()]);
        ip(&from.netns, &["-6", "route", "add", &format!("fd00:100:{}::/64", to.index), "via", &to.ip6.to_string()]);
    }
}

/// Creates the pod namespace and its veth to the node's bridge.
pub fn add_pod(node: &Node, pod: &Pod, host: u8) {
    let ns = pod.netns.as_str();
    add_netns(ns);
    let node_end = format!("p{host}");
    ip(ns, &["link", "add", "eth0", "type", "veth", "peer", "name", &node_end, "netns", &node.netns]);
    ip(&node.netns, &["link", "set", &node_end, "master", "cbr0", "up"]);
    ip(ns, &["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"]);
    ip(ns, &["addr", "add", &format!("{}/64", pod.ip6), "dev", "eth0", "nodad"]);
    ip(ns, &["link", "set", "eth0", "up"]);
    ip(ns, &["route", "add", "default", "via", &format!("10.100.{}.1", node.index)]);
    ip(ns, &["-6", "route", "add", "default", "via", &format!("fd00:100:{}::1", node.index)]);
}
