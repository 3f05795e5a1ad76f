"""The eBPF redirector in real network namespaces (root): capture both ways with no iptables or
nftables rule in the pod, exemptions, agent restart, stale state, forced load failure; the
optional sockmap acceleration (``--ebpf-sockmap``): the in-pod app <-> ztunnel hop carries bytes
exactly, both ways, through half-close and many connections, without TCP, every other socket is
left alone, and without the option nothing is put in the map."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.app import choose_redirector
from node_agent.config import Config
from node_agent.netns import run_in_netns
from node_agent.redirect import ebpf
from node_agent.redirect.ebpf import consts as k
from node_agent.redirect.ebpf import sys as bpfsys
from node_agent.redirect.ebpf.loader import default_source_dir
from node_agent.redirect.plan import EMPTY, Settings, plan_for_pod

from . import ipv6

pytestmark = pytest.mark.root

POD_IP = "10.79.0.2"
PEER_IP = "10.79.0.1"
PROBE_IP = "10.78.1.1"
SETTINGS = Settings(host_probe_ip=ipaddress.IPv4Address(PROBE_IP))
PLAN = plan_for_pod(ipaddress.IPv4Address(POD_IP), SETTINGS)
TIMEOUT = 5.0
SO_ORIGINAL_DST = 80
_nodes = itertools.count()


def path(ns: str) -> str:
    return f"/run/netns/{ns}"


def _cgroup_of_self() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return bpfsys.cgroup2_mount() / line[3:].lstrip("/")
    raise AssertionError("no cgroup v2 line in /proc/self/cgroup")


_CGROUP: list[Path] = []


def own_cgroup() -> Path:
    return _CGROUP[0]


@pytest.fixture(autouse=True)
def in_test_cgroup() -> Iterator[Path]:
    """This process in a cgroup of its own for the test: the programs, attached there, see
    exactly the test's sockets and nothing else on the machine."""
    before = _cgroup_of_self()
    cg = bpfsys.cgroup2_mount() / f"nmt-ebpf-{os.getpid()}"
    cg.mkdir(exist_ok=True)
    (cg / "cgroup.procs").write_text(str(os.getpid()))
    _CGROUP[:] = [cg]
    try:
        yield cg
    finally:
        (before / "cgroup.procs").write_text(str(os.getpid()))
        cg.rmdir()  # also detaches whatever a failed test left attached there


#: the tests' own pin root: `meshctl local down` (run by test.sh) removes /sys/fs/bpf/nodemesh
ROOT = bpfsys.BPF_FS / f"nodemesh-test-{os.getpid()}"


@pytest.fixture
def node() -> Iterator[str]:
    """A unique node name whose pin directory is removed by name, even when the test fails."""
    name = f"nmt-{next(_nodes)}"
    yield name
    ebpf.teardown(name, ROOT)
    assert not ebpf.pin_dir(name, ROOT).exists()


def start(node: str, source: Path | None = None) -> ebpf.EbpfRedirector:
    reason = ebpf.probe(own_cgroup())
    assert reason is None, reason
    return ebpf.EbpfRedirector.start(node, own_cgroup(), source, ROOT)


def listener(ns: str, port: int, mark: bool = True) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket()
        if mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, k.NM_ZTUNNEL_MARK)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(8)
        s.settimeout(TIMEOUT)
        return s

    return run_in_netns(path(ns), body)


def connect(ns: str, dst: tuple[str, int], mark: int | None = None,
            src: str | None = None) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket()
        try:
            if mark is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            if src is not None:
                s.bind((src, 0))
            s.settimeout(TIMEOUT)
            s.connect(dst)
        except BaseException:
            s.close()
            raise
        return s

    return run_in_netns(path(ns), body)


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def assert_outbound_captured(pod: str, peer: str) -> None:
    """The pod's connection to the peer's app lands on the pod's 15001, original dst intact."""
    out_l, app_l = listener(pod, 15001), listener(peer, 8080, False)
    try:
        c = connect(pod, (PEER_IP, 8080))
        conn, _ = out_l.accept()
        assert original_dst(conn) == (PEER_IP, 8080)
        conn.close()
        c.close()
    finally:
        out_l.close()
        app_l.close()


def no_rules(ns: str) -> None:
    for cmd in (["iptables-legacy-save"], ["iptables-nft-save"], ["nft", "list", "ruleset"]):
        out = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
        assert "NODEMESH" not in out.stdout.upper(), (cmd, out.stdout)
        assert "REDIRECT" not in out.stdout and "redirect" not in out.stdout, (cmd, out.stdout)


@pytest.fixture
def pod_and_peer(
    netns_factory: Callable[[str], str], veth_pair: Callable[[str, str, str, str], None]
) -> tuple[str, str]:
    pod, peer = netns_factory("pod"), netns_factory("peer")
    veth_pair(pod, peer, f"{POD_IP}/24", f"{PEER_IP}/24")
    subprocess.run(["ip", "-n", peer, "addr", "add", f"{PROBE_IP}/32", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", pod, "route", "add", f"{PROBE_IP}/32", "dev", "eth0"], check=True)
    return pod, peer


def test_traffic_is_captured_both_ways_without_rules(
    node: str, pod_and_peer: tuple[str, str]
) -> None:
    pod, peer = pod_and_peer
    red = start(node)
    assert red.read_blocking(path(pod)) == EMPTY
    assert red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP)) is True
    assert red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP)) is False
    assert red.read_blocking(path(pod)) == PLAN
    out_l, in_l, app_l = listener(pod, 15001), listener(pod, 15006), listener(peer, 8080, False)
    try:
        no_rules(pod)
        # outbound: a connection to the peer's app lands on the pod's 15001
        c = connect(pod, (PEER_IP, 8080))
        conn, _ = out_l.accept()
        assert original_dst(conn) == (PEER_IP, 8080)
        conn.sendall(b"x")
        assert c.recv(1) == b"x"
        conn.close()
        c.close()
        # the ztunnel's own (marked) sockets reach the peer untouched
        c = connect(pod, (PEER_IP, 8080), mark=k.NM_ZTUNNEL_MARK)
        conn, src = app_l.accept()
        assert src[0] == POD_IP
        conn.close()
        c.close()
        # the peer (node side) itself is never captured: its connection to the pod is inbound
        c = connect(peer, (POD_IP, 7777))
        conn, src = in_l.accept()
        assert src[0] == PEER_IP
        assert conn.getsockname() == (POD_IP, 7777)
        assert original_dst(conn) == (POD_IP, 7777)
        conn.close()
        c.close()
        no_rules(pod)
    finally:
        for s in (out_l, in_l, app_l):
            s.close()


def test_hbone_port_and_probe_source_are_exempt(node: str, pod_and_peer: tuple[str, str]) -> None:
    pod, peer = pod_and_peer
    red = start(node)
    red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))
    app = listener(pod, 8080, False)
    # no ztunnel listener yet: refused, never delivered to the app around the mesh
    with pytest.raises(ConnectionRefusedError):
        connect(peer, (POD_IP, 8080), src=PEER_IP)
    hbone, inbound = listener(pod, 15008), listener(pod, 15006)
    try:
        c = connect(peer, (POD_IP, 15008))
        conn, _ = hbone.accept()
        conn.close()
        c.close()
        c = connect(peer, (POD_IP, 8080), src=PROBE_IP)
        conn, src = app.accept()
        assert src[0] == PROBE_IP
        conn.close()
        c.close()
        c = connect(peer, (POD_IP, 8080), src=PEER_IP)
        conn, _ = inbound.accept()
        conn.close()
        c.close()
    finally:
        for s in (hbone, inbound, app):
            s.close()


def test_unenrolled_pod_is_untouched_and_remove_leaves_nothing(
    node: str, pod_and_peer: tuple[str, str]
) -> None:
    pod, peer = pod_and_peer
    red = start(node)
    app_l = listener(peer, 8080, False)
    try:
        c = connect(pod, (PEER_IP, 8080))  # not enrolled: straight to the peer
        conn, _ = app_l.accept()
        conn.close()
        c.close()
        red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))
        assert red.remove_blocking(path(pod)) is True
        assert red.read_blocking(path(pod)) == EMPTY
        assert list(bpfsys.map_keys(red._maps[k.MAP_PODS], 8)) == []
        assert list(bpfsys.map_keys(red._maps[k.MAP_POD_IPS], 4)) == []
        assert list((red.dir / "pods").iterdir()) == []
        c = connect(pod, (PEER_IP, 8080))
        conn, _ = app_l.accept()
        conn.close()
        c.close()
    finally:
        app_l.close()


def test_the_agent_never_holds_bcc_or_llvm(node: str) -> None:
    """The programs are compiled by a short-lived child; the process that runs the redirector
    (the agent) neither imports bcc nor maps libbcc/LLVM, and no program pin is left behind."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from node_agent.redirect import ebpf\n"
        f"red = ebpf.EbpfRedirector.start({node!r}, Path({str(own_cgroup())!r}), None, "
        f"Path({str(ROOT)!r}))\n"
        "maps = Path('/proc/self/maps').read_text()\n"
        "print(json.dumps({'bcc': 'bcc' in sys.modules, 'libbcc': 'libbcc' in maps,"
        " 'llvm': 'LLVM' in maps, 'dir': [p.name for p in red.dir.iterdir()]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not seen["bcc"] and not seen["libbcc"] and not seen["llvm"], seen
    assert sorted(seen["dir"]) == ["links", "maps", "pods"], seen


def test_established_connection_survives_restart(node: str, pod_and_peer: tuple[str, str]) -> None:
    pod, _peer = pod_and_peer
    red = start(node)
    red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))
    out_l = listener(pod, 15001)
    try:
        c = connect(pod, (PEER_IP, 8080))
        conn, _ = out_l.accept()
        red.close()
        del red  # the agent is gone: only pins hold the programs and maps
        red2 = start(node)  # a new agent: loads again, moves the links, keeps the maps
        assert red2.read_blocking(path(pod)) == PLAN
        c.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert c.recv(4) == b"pong"
        c2 = connect(pod, (PEER_IP, 9090))
        conn2, _ = out_l.accept()
        assert original_dst(conn2) == (PEER_IP, 9090)
        for s in (c, conn, c2, conn2):
            s.close()
    finally:
        out_l.close()


def test_stale_entries_of_a_deleted_pod_are_collected(
    node: str, netns_factory: Callable[[str], str]
) -> None:
    keep, gone = netns_factory("keep"), netns_factory("gone")
    red = start(node)
    for ns, ip in ((keep, "10.79.1.2"), (gone, "10.79.2.2")):
        addr = ipaddress.IPv4Address(ip)
        red.apply_blocking(path(ns), plan_for_pod(addr, SETTINGS), addr)
    assert len(list((red.dir / "pods").iterdir())) == 2
    subprocess.run(["ip", "netns", "del", gone], check=True)
    red2 = start(node)  # an agent restart, while the pod was deleted
    assert red2.collect_blocking([path(keep)]) == 1
    assert len(list(bpfsys.map_keys(red2._maps[k.MAP_PODS], 8))) == 1
    assert list(bpfsys.map_keys(red2._maps[k.MAP_POD_IPS], 4)) == [
        ipaddress.IPv4Address("10.79.1.2").packed
    ]
    assert len(list((red2.dir / "pods").iterdir())) == 1
    assert red2.read_blocking(path(keep)) != EMPTY


def test_forced_load_failure_falls_back_to_iptables(
    node: str, tmp_path: Path, pod_and_peer: tuple[str, str]
) -> None:
    pod, peer = pod_and_peer
    broken = tmp_path / "bpf"
    shutil.copytree(default_source_dir(), broken)
    src = (broken / "getsockopt.c").read_text()
    # the 8-byte store the verifier refuses (see the comment in getsockopt.c)
    src = src.replace("*(volatile __s32 *)&ctx->optlen = sizeof(*sin);",
                      "*(volatile __u64 *)&ctx->optlen = sizeof(*sin);")
    (broken / "getsockopt.c").write_text(src)
    config = Config(node=node, controller="x:1", ca_root=tmp_path, token_file=tmp_path,
                    zds_socket=tmp_path, redirect_mode="auto", cgroup=own_cgroup(),
                    bpf_dir=broken, bpf_pin_root=ROOT)
    red, reason = choose_redirector(config)
    assert red.mode == "iptables"
    assert "getsockopt.c" in reason and "invalid bpf_context access" in reason, reason
    assert not ebpf.pin_dir(node, ROOT).exists()  # nothing half-attached stays behind
    import asyncio

    asyncio.run(red.apply(path(pod), PLAN, ipaddress.IPv4Address(POD_IP)))
    assert_outbound_captured(pod, peer)


# -- --ebpf-sockmap --------------------------------------------------------------------------------

BIG = 48 * 1024 * 1024


def start_enrolled(node: str, pod: str, sockmap: bool) -> ebpf.EbpfRedirector:
    """The programs (with or without the sockmap acceleration), ``pod`` enrolled."""
    red = ebpf.EbpfRedirector.start(node, own_cgroup(), None, ROOT, sockmap=sockmap)
    red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))
    return red


def hops(red: ebpf.EbpfRedirector) -> set[k.HopKey]:
    return {k.HopKey.unpack(raw) for raw in bpfsys.map_keys(red._maps[k.MAP_HOPS], 24)}


def bytes_acked(s: socket.socket) -> int:
    """What TCP itself carried on this socket (tcp_info.tcpi_bytes_acked)."""
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("=Q", raw, 120)[0])


def pump(src: socket.socket, data: bytes, half_close: bool) -> threading.Thread:
    def body() -> None:
        src.sendall(data)
        if half_close:
            src.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=body)
    t.start()
    return t


def drain(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def hop(pod: str, out_l: socket.socket) -> tuple[socket.socket, socket.socket]:
    app = connect(pod, (PEER_IP, 8080))
    zt, _ = out_l.accept()
    zt.settimeout(30)
    app.settimeout(30)
    return app, zt


def test_hop_carries_bytes_exactly_both_ways_without_tcp(
    node: str, pod_and_peer: tuple[str, str]
) -> None:
    pod, _ = pod_and_peer
    red = start_enrolled(node, pod, sockmap=True)
    assert (red.dir / "links" / "nm_sk_msg").exists()
    out_l = listener(pod, 15001)
    try:
        app, zt = hop(pod, out_l)
        app_port = app.getsockname()[1]
        pod_ip = ipaddress.IPv4Address(POD_IP)
        end = k.HopKey(0, pod_ip, app_port, pod_ip, 15001)
        got = {(h.local_port, h.remote_port) for h in hops(red)}
        assert got == {(end.local_port, end.remote_port), (end.remote_port, end.local_port)}
        # both directions at once, then half-close each way: every byte, in order, then EOF
        up, down = os.urandom(BIG), os.urandom(BIG)
        t1, t2 = pump(app, up, True), pump(zt, down, True)
        got_up, got_down = [b""], [b""]
        r = threading.Thread(target=lambda: got_up.__setitem__(0, drain(zt)))
        r.start()
        got_down[0] = drain(app)
        r.join()
        t1.join()
        t2.join()
        assert hashlib.sha256(got_up[0]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down[0]).digest() == hashlib.sha256(down).digest()
        # the bytes did not go through TCP (only handshake and FIN were acknowledged)
        assert bytes_acked(app) < 1 << 20 and bytes_acked(zt) < 1 << 20
        app.close()
        zt.close()
        # half-close one way only: the other way keeps working after EOF was seen
        app, zt = hop(pod, out_l)
        app.sendall(b"request")
        app.shutdown(socket.SHUT_WR)
        assert drain(zt) == b"request"
        zt.sendall(b"response" * 10000)
        zt.close()
        assert drain(app) == b"response" * 10000
        app.close()
        # many connections, each exact; the map empties as they close
        for i in range(200):
            app, zt = hop(pod, out_l)
            msg = f"hello {i}".encode() * (i + 1)
            app.sendall(msg)
            assert zt.recv(len(msg), socket.MSG_WAITALL) == msg
            zt.sendall(msg[::-1])
            assert app.recv(len(msg), socket.MSG_WAITALL) == msg[::-1]
            app.close()
            zt.close()
        assert hops(red) == set()
    finally:
        out_l.close()


def test_other_sockets_are_never_in_the_map(
    node: str, pod_and_peer: tuple[str, str], netns_factory: Callable[[str], str]
) -> None:
    pod, peer = pod_and_peer
    red = start_enrolled(node, pod, sockmap=True)
    out_l, app_l = listener(pod, 15001), listener(peer, 8080, False)
    local_l, in_l = listener(pod, 9000, False), listener(pod, 15006)
    other = netns_factory("other")
    other_l = listener(other, 15001, False)
    opened: list[socket.socket] = []
    try:
        # the ztunnel's marked socket to another pod; in-pod loopback; inbound from the peer;
        # an unenrolled pod's own connection to its 15001
        opened.append(connect(pod, (PEER_IP, 8080), mark=k.NM_ZTUNNEL_MARK))
        opened.append(app_l.accept()[0])
        opened.append(connect(pod, ("127.0.0.1", 9000)))
        opened.append(local_l.accept()[0])
        opened.append(connect(peer, (POD_IP, 7777)))
        opened.append(in_l.accept()[0])
        opened.append(connect(other, ("127.0.0.1", 15001)))
        opened.append(other_l.accept()[0])
        assert hops(red) == set()
        for a, b in zip(opened[::2], opened[1::2], strict=True):
            a.sendall(b"x" * 100000)
            assert b.recv(100000, socket.MSG_WAITALL) == b"x" * 100000
            assert bytes_acked(a) >= 100000  # TCP carried them
    finally:
        for s in (*opened, out_l, app_l, local_l, in_l, other_l):
            s.close()


def test_restarts_keep_or_drop_the_acceleration(
    node: str, pod_and_peer: tuple[str, str]
) -> None:
    pod, _ = pod_and_peer
    red = start_enrolled(node, pod, sockmap=True)
    red.close()
    red = start_enrolled(node, pod, sockmap=True)  # a restart with it: the pinned link moves
    out_l = listener(pod, 15001)
    try:
        app, zt = hop(pod, out_l)
        assert len(hops(red)) == 2
        app.sendall(b"z" * 100000)
        assert zt.recv(100000, socket.MSG_WAITALL) == b"z" * 100000
        assert bytes_acked(app) < 100000
        app.close()
        zt.close()
        red.close()
        red = start_enrolled(node, pod, sockmap=False)  # an agent restarted without the option
        assert not (red.dir / "links" / "nm_sk_msg").exists()
        app, zt = hop(pod, out_l)
        assert hops(red) == set()
        app.sendall(b"y" * 100000)
        assert zt.recv(100000, socket.MSG_WAITALL) == b"y" * 100000
        assert bytes_acked(app) >= 100000
        app.close()
        zt.close()
    finally:
        out_l.close()


# -- a node moving from iptables to eBPF ---------------------------------------------------------


def test_switch_from_iptables_removes_the_old_rules(
    node: str, tmp_path: Path, pod_and_peer: tuple[str, str], netns_factory: Callable[[str], str]
) -> None:
    import asyncio

    from node_agent.redirect import iptables

    pod, peer = pod_and_peer
    fresh = netns_factory("fresh")  # a pod created after the switch
    iptables.apply(path(pod), PLAN)  # what the iptables-mode agent left
    assert "NODEMESH_OUTPUT" in subprocess.run(
        ["ip", "netns", "exec", pod, "iptables-legacy-save", "-t", "nat"],
        capture_output=True, text=True, check=True).stdout
    config = Config(node=node, controller="x:1", ca_root=tmp_path, token_file=tmp_path,
                    zds_socket=tmp_path, redirect_mode="ebpf", cgroup=own_cgroup(),
                    bpf_pin_root=ROOT)
    red, _ = choose_redirector(config)
    assert red.mode == "ebpf"

    async def agent_start() -> None:
        assert await red.read(path(pod)) == EMPTY  # the eBPF state: nothing yet
        assert await red.apply(path(pod), PLAN, ipaddress.IPv4Address(POD_IP)) is True
        await red.apply(path(fresh), PLAN, ipaddress.IPv4Address("10.79.9.9"))

    asyncio.run(agent_start())
    no_rules(pod)
    # a netns that never had a nat table is not given one by looking
    tables = subprocess.run(["ip", "netns", "exec", fresh, "cat", "/proc/net/ip_tables_names"],
                            capture_output=True, text=True).stdout.split()
    assert "nat" not in tables
    # and capture works through eBPF alone
    assert_outbound_captured(pod, peer)


# -- IPv6: the mesh is IPv4; dual-stack sockets are captured, IPv6 proper never goes around it ----


def test_dual_stack_socket_to_an_ipv4_address_is_captured(
    node: str, pod_and_peer: tuple[str, str]
) -> None:
    pod, _ = pod_and_peer
    start(node).apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))
    ipv6.check_dual_stack_socket_captured(pod, POD_IP, PEER_IP)


def test_ipv6_proper_is_refused_both_ways(node: str, pod_and_peer: tuple[str, str]) -> None:
    pod, peer = pod_and_peer

    def redirect() -> None:
        start(node).apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))

    ipv6.check_ipv6_refused_both_ways(pod, peer, redirect)
    no_rules(pod)
