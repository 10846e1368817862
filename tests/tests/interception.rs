//! Privileged: the eBPF interception programs on the real kernel, driven in-process through
//! `meshd::ebpf::Datapath` (this test process plays the agent: it owns the capture listener in
//! the pod's namespace and its cgroup carries the getsockopt program).

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    time::Duration,
};

use meshd::{
    ebpf::{flow_key, orig_addr, original_dst, Datapath, DatapathOptions, Prefix},
    netns::{netns_cookie, Netns},
};
use meshd_common::{Event, Reason, WorkloadInfo, AGENT_SOCKET_MARK};
use meshd_tests::{paths, procs, Cluster, Pod};

const CAPTURE: u16 = 15001;
const T: Duration = Duration::from_secs(20);

struct Fixture {
    cluster: Cluster,
    dp: Option<Datapath>,
}

impl Fixture {
    fn new(label: &str, meshed: &[(&str, u8, (u16, u16))]) -> Self {
        let mut cluster = Cluster::new(label);
        cluster.add_node("a");
        cluster.add_node("b");
        let mut dp = Datapath::load(&DatapathOptions {
            node: format!("{}-dp", cluster.id),
            bpffs: PathBuf::from("/sys/fs/bpf"),
            object: None,
        })
        .unwrap_or_else(|e| panic!("load the eBPF programs: {e}"));
        let prefixes: Vec<Prefix> = meshed
            .iter()
            .map(|(a, len, ports)| Prefix { addr: a.parse().unwrap(), len: *len, ports: *ports })
            .collect();
        dp.maps().set_prefixes(&prefixes, &[]).expect("write meshed prefixes");
        let own = meshd::cgroup::own_cgroup(&meshd::cgroup::cgroup2_root().unwrap()).unwrap();
        dp.attach_getsockopt(&own).expect("attach getsockopt to this process's cgroup");
        Self { cluster, dp: Some(dp) }
    }

    fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("datapath")
    }

    /// Enrolls `pod` with capture listeners (v4 and v6) in its namespace.
    fn enroll(&mut self, pod: &Pod, id: u32) -> (TcpListener, TcpListener) {
        let ns = Netns::open(&pod.netns_path()).unwrap();
        let v4 = ns.listen(SocketAddr::from(([127, 0, 0, 1], CAPTURE)), AGENT_SOCKET_MARK).unwrap();
        let v6 = ns.listen(format!("[::1]:{CAPTURE}").parse().unwrap(), AGENT_SOCKET_MARK).unwrap();
        v4.set_nonblocking(false).unwrap();
        v6.set_nonblocking(false).unwrap();
        let info = WorkloadInfo { workload_id: id, capture_port: CAPTURE, inbound_port: 15008, flags: 1, identity: 0 };
        self.dp().enroll(&pod.cgroup, info).expect("enroll");
        (v4, v6)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            dp.shutdown().expect("detach and unpin");
        }
    }
}

fn testkit(pod: &Pod, args: &[&str]) -> std::process::Command {
    let mut cmd = pod.command(paths::bin("testkit"));
    cmd.args(args);
    cmd
}

fn serve(pod: &Pod, addr: &str, name: &str) -> procs::Background {
    procs::spawn_ready(testkit(pod, &["serve", addr, "--name", name]), name, "listening")
}

/// Accepts one connection on `listener` within `T` (on a thread, so a missing redirect fails
/// the test instead of hanging it).
fn accept(listener: &TcpListener) -> std::net::TcpStream {
    let l = listener.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept());
    });
    rx.recv_timeout(T).expect("no redirected connection reached the capture listener").unwrap().0
}

#[test]
fn meshed_ipv4_connect_is_captured_with_its_original_destination() {
    let mut f = Fixture::new("intercept-v4", &[("10.100.0.0", 16, (1, 65535))]);
    let client = f.cluster.add_pod("a", "client");
    let server = f.cluster.add_pod("b", "server");
    let _srv = serve(&server, "0.0.0.0:8080", "server");
    let (v4, _v6) = f.enroll(&client, 7);

    let dst = format!("{}:8080", server.ip);
    let conn = std::thread::spawn({
        let cmd = testkit(&client, &["connect", &dst]);
        move || procs::run_ok(cmd, "client", T)
    });
    let mut sock = accept(&v4);
    let want: SocketAddr = dst.parse().unwrap();
    assert_eq!(original_dst(&sock, false).expect("getsockopt SO_ORIGINAL_DST"), want);
    let key = flow_key(netns_cookie(&sock).unwrap(), sock.peer_addr().unwrap(), sock.local_addr().unwrap());
    let orig = f.dp().maps().take_orig_dst(&key).expect("ORIG_DST has the flow");
    assert_eq!((orig_addr(&orig), orig.workload_id), (want, 7));
    sock.write_all(b"captured\n").unwrap();
    drop(sock);
    assert_eq!(conn.join().unwrap().trim(), "captured", "the client must have been answered by the capture listener");
    let counters = f.dp().maps().counters();
    assert!(counters.event(Event::Redirected) >= 1 && counters.event(Event::OrigDstAnswered) >= 1, "{counters:?}");
    assert_eq!(counters.error(Reason::ConnectRecordOrig), 0);
}

#[test]
fn ipv6_and_v4_mapped_connects_are_captured() {
    let mut f = Fixture::new("intercept-v6", &[("10.100.0.0", 16, (1, 65535)), ("fd00:100::", 32, (1, 65535))]);
    let client = f.cluster.add_pod("a", "client");
    let server = f.cluster.add_pod("b", "server");
    let _srv = serve(&server, "[::]:8080", "server");
    let (v4, v6) = f.enroll(&client, 3);

    for (dst, listener, ipv6, want) in [
        (format!("[{}]:8080", server.ip6), &v6, true, format!("[{}]:8080", server.ip6)),
        (format!("[::ffff:{}]:8080", server.ip), &v4, false, format!("{}:8080", server.ip)),
    ] {
        let cmd = testkit(&client, &["connect", &dst]);
        let conn = std::thread::spawn(move || procs::run_ok(cmd, "client", T));
        let mut sock = accept(listener);
        let want: SocketAddr = want.parse().unwrap();
        assert_eq!(original_dst(&sock, ipv6).expect("getsockopt original dst"), want, "{dst}");
        let key = flow_key(netns_cookie(&sock).unwrap(), sock.peer_addr().unwrap(), sock.local_addr().unwrap());
        assert_eq!(orig_addr(&f.dp().maps().take_orig_dst(&key).expect("ORIG_DST has the flow")), want);
        sock.write_all(b"captured\n").unwrap();
        drop(sock);
        assert_eq!(conn.join().unwrap().trim(), "captured", "{dst}");
    }
}

#[test]
fn unmeshed_destinations_and_agent_sockets_go_direct() {
    // Only port 8080 of node b's pods is in the mesh.
    let mut f = Fixture::new("intercept-direct", &[("10.100.1.0", 24, (8080, 8080))]);
    let client = f.cluster.add_pod("a", "client");
    let server = f.cluster.add_pod("b", "server");
    let _meshed = serve(&server, "0.0.0.0:8080", "server-8080");
    let _other_port = serve(&server, "0.0.0.0:9090", "server-9090");
    let node_b = f.cluster.node("b").clone();
    let mut node_srv = node_b.command(paths::bin("testkit"));
    node_srv.args(["serve", "0.0.0.0:7070", "--name", "node-b"]);
    let _node = procs::spawn_ready(node_srv, "node server", "listening");
    let _capture = f.enroll(&client, 1);

    let direct = |args: &[&str]| procs::run_ok(testkit(&client, args), "client", T).trim().to_string();
    assert_eq!(direct(&["connect", &format!("{}:9090", server.ip)]), "server-9090", "unmeshed port");
    assert_eq!(direct(&["connect", &format!("{}:7070", node_b.ip)]), "node-b", "unmeshed prefix");
    let mark = AGENT_SOCKET_MARK.to_string();
    assert_eq!(
        direct(&["connect", &format!("{}:8080", server.ip), "--mark", &mark]),
        "server-8080",
        "a socket carrying the agent's mark is never redirected"
    );
    // The agent itself (this process, not in the pod's cgroup) connecting from the pod's namespace.
    let ns = Netns::open(&client.netns_path()).unwrap();
    let dst: SocketAddr = format!("{}:8080", server.ip).parse().unwrap();
    let sock = ns.socket_for(dst, 0).unwrap();
    sock.set_nonblocking(false).unwrap();
    sock.connect_timeout(&dst.into(), T).expect("agent connects directly");
    let mut s: std::net::TcpStream = sock.into();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert_eq!(answer.trim(), "server-8080");
    let c = f.dp().maps().counters();
    assert!(c.event(Event::Direct) >= 2 && c.event(Event::Redirected) == 0, "{c:?}");
}

#[test]
fn equal_local_ports_in_two_namespaces_do_not_collide() {
    let mut f = Fixture::new("intercept-collide", &[("10.100.0.0", 16, (1, 65535))]);
    let p1 = f.cluster.add_pod("a", "one");
    let p2 = f.cluster.add_pod("a", "two");
    let server = f.cluster.add_pod("b", "server");
    let (l1, _) = f.enroll(&p1, 1);
    let (l2, _) = f.enroll(&p2, 2);
    // Both clients connect from local port 40000: their flows differ only by namespace.
    let c1 = testkit(&p1, &["connect", &format!("{}:1111", server.ip), "--bind-port", "40000"]);
    let c2 = testkit(&p2, &["connect", &format!("{}:2222", server.ip), "--bind-port", "40000"]);
    let t1 = std::thread::spawn(move || procs::run_ok(c1, "client one", T));
    let t2 = std::thread::spawn(move || procs::run_ok(c2, "client two", T));
    let (mut s1, mut s2) = (accept(&l1), accept(&l2));
    assert_eq!(s1.peer_addr().unwrap().port(), 40000);
    assert_eq!(s2.peer_addr().unwrap().port(), 40000);
    for (sock, id, port) in [(&mut s1, 1, 1111), (&mut s2, 2, 2222)] {
        let key = flow_key(netns_cookie(sock).unwrap(), sock.peer_addr().unwrap(), sock.local_addr().unwrap());
        let orig = f.dp().maps().take_orig_dst(&key).expect("ORIG_DST entry");
        assert_eq!((orig.workload_id, orig.port), (id, port));
        assert!(original_dst(sock, false).is_err(), "a taken entry is gone from ORIG_DST");
        sock.write_all(format!("{id}\n").as_bytes()).unwrap();
    }
    drop((s1, s2));
    assert_eq!(t1.join().unwrap().trim(), "1");
    assert_eq!(t2.join().unwrap().trim(), "2");
}

#[test]
fn ten_thousand_short_connections_leave_no_map_entries() {
    const N: u32 = 10_000;
    let mut f = Fixture::new("intercept-churn", &[("10.100.0.0", 16, (1, 65535))]);
    let client = f.cluster.add_pod("a", "client");
    let server = f.cluster.add_pod("b", "server");
    let (v4, _) = f.enroll(&client, 1);
    // Answer every connection without consulting the maps: only sockops may clean up.
    let l = v4.try_clone().unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..N {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(b"x\n");
        }
    });
    let out = procs::run_ok(
        testkit(&client, &["churn", &format!("{}:80", server.ip), "--count", &N.to_string()]),
        "churn",
        Duration::from_secs(300),
    );
    assert_eq!(out.trim(), N.to_string());
    acceptor.join().unwrap();
    // Sockets close asynchronously (FIN handshakes): give the last ones a moment.
    let mut entries = (usize::MAX, usize::MAX);
    for _ in 0..100 {
        entries = f.dp().maps().flow_entries();
        if entries == (0, 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(entries, (0, 0), "ORIG_DST and SOCK_ORIG must be empty after {N} closed connections");
    let c = f.dp().maps().counters();
    assert_eq!(c.event(Event::FlowRecorded), u64::from(N), "{c:?}");
    assert_eq!(c.event(Event::FlowRemoved), u64::from(N), "{c:?}");
}

#[test]
fn unenrolling_restores_the_direct_path_and_a_dead_agent_fails_closed() {
    let mut f = Fixture::new("intercept-unenroll", &[("10.100.0.0", 16, (1, 65535))]);
    let client = f.cluster.add_pod("a", "client");
    let server = f.cluster.add_pod("b", "server");
    let _srv = serve(&server, "0.0.0.0:8080", "server");
    let dst = format!("{}:8080", server.ip);
    let (v4, v6) = f.enroll(&client, 1);
    // Capture listener gone while the programs stay attached (as after an agent crash): the
    // connection must be refused, never sent directly in plaintext.
    drop((v4, v6));
    let out = procs::run(testkit(&client, &["connect", &dst, "--timeout-secs", "5"]), "client", T);
    assert!(!out.status.success(), "connect must fail closed, got {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{}", String::from_utf8_lossy(&out.stderr));

    let id = meshd::cgroup::cgroup_id(&client.cgroup).unwrap();
    f.dp().unenroll(id).unwrap();
    let out = procs::run_ok(testkit(&client, &["connect", &dst]), "client", T);
    assert_eq!(out.trim(), "server", "after unenroll the client reaches the server directly");
}

#[test]
fn a_restarted_agent_adopts_stale_pins_without_a_gap() {
    let mut f = Fixture::new("intercept-stale", &[("10.100.0.0", 16, (1, 65535))]);
    let client = f.cluster.add_pod("a", "client");
    let server = f.cluster.add_pod("b", "server");
    let _srv = serve(&server, "0.0.0.0:8080", "server");
    let first = f.enroll(&client, 1);
    let node = format!("{}-dp", f.cluster.id);
    // Crash: the datapath goes away without shutdown(); its file descriptors close as they would
    // at process death, and only the pinned links keep the programs attached.
    drop(f.dp.take());
    drop(first);
    let links = PathBuf::from("/sys/fs/bpf/meshd").join(&node).join("links");
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), 4, "connect4, connect6, sockops and ingress links pinned");

    let mut dp = Datapath::load(&DatapathOptions { node: node.clone(), bpffs: "/sys/fs/bpf".into(), object: None })
        .expect("a second load over stale pins works");
    dp.maps().set_prefixes(&[Prefix { addr: "10.100.0.0".parse().unwrap(), len: 16, ports: (1, 65535) }], &[]).unwrap();
    f.dp = Some(dp);
    let (v4, _v6) = f.enroll(&client, 2);
    f.dp().release_stale(&meshd::cgroup::existing_ids(&meshd::cgroup::cgroup2_root().unwrap()));
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), 4, "only the new run's links remain");

    let dst = format!("{}:8080", server.ip);
    let cmd = testkit(&client, &["connect", &dst]);
    let conn = std::thread::spawn(move || procs::run_ok(cmd, "client", T));
    let mut sock = accept(&v4);
    let key = flow_key(netns_cookie(&sock).unwrap(), sock.peer_addr().unwrap(), sock.local_addr().unwrap());
    assert_eq!(f.dp().maps().take_orig_dst(&key).expect("new run's map has the flow").workload_id, 2);
    sock.write_all(b"captured\n").unwrap();
    drop(sock);
    assert_eq!(conn.join().unwrap().trim(), "captured");
}
