"""The eBPF redirector in real network namespaces (root): capture both ways with no iptables or
nftables rule in the pod, exemptions, agent restart, stale state, forced load failure."""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import socket
import subprocess
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


def test_established_connection_survives_restart(node: str, pod_and_peer: tuple[str, str]) -> None:
    pod, _peer = pod_and_peer
    red = start(node)
    red.apply_blocking(path(pod), PLAN, ipaddress.IPv4Address(POD_IP))
    out_l = listener(pod, 15001)
    try:
        c = connect(pod, (PEER_IP, 8080))
        conn, _ = out_l.accept()
        red.loaded.bpf.cleanup()  # type: ignore[attr-defined]
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
