"""meshd VM smoke check, run inside the guest by `cargo xtask vm-test` (see xtask/src/vm/smoke.rs).

Proves the environment the real VM tests need: the expected kernel, the tls module, netns + veth,
cgroup2, bpffs, ffmpeg, and a real kTLS round trip (TLS 1.3, AES-GCM-128, fixed test keys).
Writes $MESHD_VM_OUT/result.json; exits 1 if any check fails. All traffic stays inside the guest.
"""
import errno, json, os, socket, struct, subprocess, time

SOL_TLS, TCP_ULP, TLS_TX, TLS_RX = 282, 31, 1, 2
TLS_SET_RECORD_TYPE, TLS_GET_RECORD_TYPE = 1, 2
TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128 = 0x0304, 51
KEY1 = (bytes(range(16)), bytes(range(16, 24)), bytes(range(24, 28)))  # key, iv, salt
KEY2 = (bytes(range(100, 116)), bytes(range(116, 124)), bytes(range(124, 128)))
MARKER = b"meshd-ktls-plaintext-marker-0123456789"

checks = []


def check(name, fn):
    t0 = time.monotonic()
    try:
        status, detail = fn()
    except Exception as e:  # a check that raises has failed
        status, detail = "fail", f"{type(e).__name__}: {e}"
    checks.append({"name": name, "status": status, "detail": detail, "seconds": round(time.monotonic() - t0, 2)})
    print(f"{status.upper():4} {name}: {detail}", flush=True)


def sh(*argv, timeout=60):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout + r.stderr


def tls_stat():
    try:
        with open("/proc/net/tls_stat") as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    except FileNotFoundError:
        return {}


def mounted(fstype, where):
    with open("/proc/mounts") as f:
        return any(l.split()[1] == where and l.split()[2] == fstype for l in f)


def c_uname():
    want, got = os.environ.get("MESHD_EXPECT_RELEASE", ""), os.uname().release
    return ("pass" if got == want else "fail"), f"uname -r = {got}" + ("" if got == want else f", expected {want}")


def c_tls_module():
    sh("modprobe", "tls")
    with open("/proc/modules") as f:
        loaded = any(l.startswith("tls ") for l in f)
    ok = loaded and os.path.exists("/proc/net/tls_stat")
    return ("pass" if ok else "fail"), f"tls loaded={loaded}, tls_stat has {len(tls_stat())} counters"


def c_netns_veth():
    for cmd in ["netns add meshd-a", "netns add meshd-b", "link add veth-a type veth peer name veth-b",
                "link set veth-a netns meshd-a", "link set veth-b netns meshd-b",
                "-n meshd-a addr add 10.99.0.1/24 dev veth-a", "-n meshd-b addr add 10.99.0.2/24 dev veth-b",
                "-n meshd-a link set veth-a up", "-n meshd-b link set veth-b up", "-n meshd-a link set lo up"]:
        sh("ip", *cmd.split())
    out = sh("ip", "netns", "exec", "meshd-a", "busybox", "ping", "-c", "1", "-W", "5", "10.99.0.2")
    line = next((l for l in out.splitlines() if "bytes from" in l), out.strip()[-100:])
    return "pass", f"10.99.0.1 (netns meshd-a) -> 10.99.0.2 (netns meshd-b): {line.strip()}"


def c_cgroup2():
    if not mounted("cgroup2", "/sys/fs/cgroup"):
        return "fail", "cgroup2 not mounted at /sys/fs/cgroup"
    cg = "/sys/fs/cgroup/meshd-smoke"
    os.makedirs(cg, exist_ok=True)
    with open(f"{cg}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    with open("/proc/self/cgroup") as f:
        mine = f.read().strip()
    with open("/sys/fs/cgroup/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    os.rmdir(cg)
    return ("pass" if mine == "0::/meshd-smoke" else "fail"), f"joined a child cgroup: /proc/self/cgroup = {mine}"


def c_bpffs():
    if not mounted("bpf", "/sys/fs/bpf"):
        return "fail", "bpffs not mounted at /sys/fs/bpf"
    pin = "/sys/fs/bpf/meshd_smoke"
    sh("bpftool", "map", "create", pin, "type", "array", "key", "4", "value", "4", "entries", "1", "name", "meshd_smoke")
    shown = sh("bpftool", "map", "show", "pinned", pin).split("\n")[0]
    os.unlink(pin)
    return "pass", f"pinned a map with bpftool: {shown.strip()}"


def c_ffmpeg():
    out = sh("ffmpeg", "-hide_banner", "-nostdin", "-f", "lavfi", "-i", "testsrc2=duration=1", "-f", "null", "-",
             timeout=180)
    last = [l for l in out.replace("\r", "\n").splitlines() if l.startswith("frame=")]
    return "pass", (last[-1].strip() if last else "ran")[:120]


def info(k):
    key, iv, salt = k
    return struct.pack("=HH8s16s4s8s", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128, iv, key, salt, bytes(8))


def tcp_pair():
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(1)
        c = socket.create_connection(lsn.getsockname())
        s, _ = lsn.accept()
    for x in (c, s):
        x.settimeout(10)
    return c, s


def ktls(sock, direction, k):
    try:
        ulp = sock.getsockopt(socket.IPPROTO_TCP, TCP_ULP, 16).rstrip(b"\0")
    except OSError:
        ulp = b""
    if ulp != b"tls":
        sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    sock.setsockopt(SOL_TLS, direction, info(k))


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def c_ktls_roundtrip():
    before = tls_stat()
    c, s = tcp_pair()
    with c, s:
        ktls(c, TLS_TX, KEY1); ktls(s, TLS_RX, KEY1)
        ktls(s, TLS_TX, KEY2); ktls(c, TLS_RX, KEY2)
        c.sendall(MARKER)
        got = recv_exact(s, len(MARKER))
        s.sendall(got[::-1])
        back = recv_exact(c, len(MARKER))
    after = tls_stat()
    tx, rx = after["TlsTxSw"] - before["TlsTxSw"], after["TlsRxSw"] - before["TlsRxSw"]
    ok = got == MARKER and back == MARKER[::-1] and tx >= 2 and rx >= 2
    return ("pass" if ok else "fail"), f"echoed {len(MARKER)} bytes both ways through kTLS; TlsTxSw +{tx}, TlsRxSw +{rx}"


def c_ktls_wire():
    c, s = tcp_pair()
    with c, s:
        ktls(c, TLS_TX, KEY1)
        c.sendall(MARKER)
        n = 5 + len(MARKER) + 1 + 16  # header, ciphertext with inner content type, GCM tag
        wire = recv_exact(s, n)
    hdr_ok = wire[:5] == bytes([23, 3, 3]) + (n - 5).to_bytes(2, "big")
    hidden = MARKER not in wire
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        key, iv, salt = KEY1
        plain = AESGCM(key).decrypt(salt + iv, wire[5:], wire[:5])  # record 0: nonce = salt||iv
        dec, decrypted = plain == MARKER + b"\x17", "decrypts in userspace to the marker"
    except ImportError:
        dec, decrypted = True, "not decrypted (python3-cryptography missing)"
    ok = hdr_ok and hidden and dec
    return ("pass" if ok else "fail"), (f"raw record header {wire[:5].hex()} ok={hdr_ok}, plaintext absent from wire={hidden}, "
                                        f"{decrypted if dec else 'DOES NOT decrypt to the marker'}")


def c_ktls_rekey():
    expected = os.environ.get("MESHD_EXPECT_REKEY") == "1"
    c, s = tcp_pair()
    with c, s:
        ktls(c, TLS_TX, KEY1); ktls(s, TLS_RX, KEY1)
        c.sendall(b"before")
        recv_exact(s, 6)
        key_update = bytes([24, 0, 0, 1, 0])  # KeyUpdate(update_not_requested)
        c.sendmsg([key_update], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([22]))])
        try:
            ktls(c, TLS_TX, KEY2)
        except OSError as e:
            return ("fail" if expected else "skip"), f"TX rekey refused ({os.strerror(e.errno)}): kernel < 6.14 has no kTLS rekey"
        c.sendall(b"after!")
        msg, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(1))
        rtype = next((d[0] for lvl, typ, d in anc if lvl == SOL_TLS and typ == TLS_GET_RECORD_TYPE), None)
        # Let "after!" arrive; the kernel must hold it until the new key is set. Note: a *blocking*
        # read issued after the KeyUpdate was read and before TLS_RX is set again sleeps (seen on
        # 7.3: no EKEYEXPIRED, no wake-up), so the agent must install the new RX key first.
        time.sleep(0.5)
        s.setblocking(False)
        try:
            s.recv(6)
            paused = "no (data was returned before the new key was set)"
        except OSError as e:
            paused = errno.errorcode.get(e.errno, str(e.errno))
        s.settimeout(10)
        ktls(s, TLS_RX, KEY2)
        after = recv_exact(s, 6)
    ok = rtype == 22 and msg == key_update and paused in ("EKEYEXPIRED", "EAGAIN") and after == b"after!"
    return ("pass" if ok else "fail"), (f"TX+RX rekeyed; KeyUpdate record type={rtype}, read before RX rekey: {paused}, "
                                        f"data after rekey ok={after == b'after!'}")


def main():
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    print(f"guest up {uptime:.2f} s at start of smoke check", flush=True)
    check("uname", c_uname)
    check("tls_module", c_tls_module)
    stat_before = tls_stat()
    for name, fn in [("netns_veth_ping", c_netns_veth), ("cgroup2", c_cgroup2), ("bpffs", c_bpffs),
                     ("ffmpeg", c_ffmpeg), ("ktls_roundtrip", c_ktls_roundtrip), ("ktls_wire", c_ktls_wire),
                     ("ktls_rekey", c_ktls_rekey)]:
        check(name, fn)
    stat_after = tls_stat()
    result = {"release": os.uname().release, "uptime_at_start": uptime, "checks": checks,
              "tls_stat_before": stat_before, "tls_stat_after": stat_after,
              "tls_stat_delta": {k: v - stat_before.get(k, 0) for k, v in stat_after.items()}}
    with open(os.path.join(os.environ["MESHD_VM_OUT"], "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 1 if any(c["status"] == "fail" for c in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
