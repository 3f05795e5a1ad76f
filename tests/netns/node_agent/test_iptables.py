"""The iptables redirector in real network namespaces (root)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent.netns import run_in_netns
from node_agent.redirect import iptables as ipt
from node_agent.redirect.iptables import guard6
from node_agent.redirect.plan import EMPTY, Settings, plan_for_pod, render_iptables_save

from . import ipv6

pytestmark = pytest.mark.root

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "iptables"
POD_IP = "10.79.0.2"
PEER_IP = "10.79.0.1"
SETTINGS = Settings(host_probe_ip=ipaddress.IPv4Address("10.78.1.1"))
PLAN = plan_for_pod(ipaddress.IPv4Address(POD_IP), SETTINGS)
ACCEPT_TIMEOUT = 5.0


def path(ns: str) -> str:
    return f"/run/netns/{ns}"


def save(ns: str, counters: bool = False) -> str:
    """The nat table as iptables-save prints it, minus its timestamped comment lines."""
    args = ["ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "nat"]
    if counters:
        args.append("-c")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return "".join(line for line in out.splitlines(keepends=True) if not line.startswith("#"))


def ours(text: str) -> str:
    """Lines about our chains and jumps, plus the table header and COMMIT (comments dropped)."""
    keep = [
        line
        for line in text.splitlines()
        if line in ("*nat", "COMMIT") or "NODEMESH" in line
    ]
    return "\n".join(keep) + "\n"


def test_apply_matches_golden_and_is_idempotent(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("pod")
    assert ipt.read(path(ns)) == EMPTY
    assert ipt.apply(path(ns), PLAN) is True
    assert ours(save(ns)) == (GOLDEN / "pod-host-probe.golden").read_text()
    assert ours(save(ns)) == render_iptables_save(PLAN)
    assert ipt.read(path(ns)) == PLAN

    # traffic through the rules bumps counters; a second apply must not reset or duplicate them
    _connect_loopback_redirected(ns)
    before = save(ns, counters=True)
    assert re.search(r"\[[1-9]\d*:\d+\] -A OUTPUT -j NODEMESH_OUTPUT", before), before
    assert ipt.apply(path(ns), PLAN) is False
    assert save(ns, counters=True) == before


def _connect_loopback_redirected(ns: str) -> None:
    def body() -> None:
        with socket.create_connection(("127.0.0.1", 9), timeout=0.2) as _:
            pass

    # -o lo traffic is exempt: nobody listens on 9, so this is refused, but it counts
    with pytest.raises(OSError):
        run_in_netns(path(ns), body)


def test_repairs_only_what_differs(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("pod")
    ipt.apply(path(ns), PLAN)
    other = "-A OUTPUT -p udp -j RETURN"
    subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-t", "nat", *other.split()],
                   check=True)
    # a duplicated jump and a tampered chain are repaired, the foreign rule stays
    subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-t", "nat", "-A", "OUTPUT",
                    "-j", "NODEMESH_OUTPUT"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-t", "nat", "-D",
                    "NODEMESH_PREROUTING", "1"], check=True)
    assert ipt.read(path(ns)) != PLAN
    assert ipt.apply(path(ns), PLAN) is True
    assert ipt.read(path(ns)) == PLAN
    assert ours(save(ns)) == render_iptables_save(PLAN)
    assert other in save(ns)


def test_remove_leaves_nothing_of_ours(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("pod")
    subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-t", "nat", "-A", "OUTPUT",
                    "-p", "udp", "-j", "RETURN"], check=True)
    ipt.apply(path(ns), PLAN)
    assert ipt.remove(path(ns)) is True
    text = save(ns)
    assert "NODEMESH" not in text
    assert "-A OUTPUT -p udp -j RETURN" in text
    assert ipt.read(path(ns)) == EMPTY
    assert ipt.remove(path(ns)) is False


def test_missing_netns_is_a_clear_error() -> None:
    from node_agent.errors import NetnsError

    with pytest.raises(NetnsError, match="does the pod still exist"):
        ipt.read("/run/netns/nodemesh-no-such-netns")


def _listener(ns: str, port: int) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(8)
        s.settimeout(ACCEPT_TIMEOUT)
        return s

    return run_in_netns(path(ns), body)


def _connect(ns: str, dst: tuple[str, int], mark: int | None = None) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket()
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.settimeout(ACCEPT_TIMEOUT)
        s.connect(dst)
        return s

    return run_in_netns(path(ns), body)


SO_ORIGINAL_DST = 80


@pytest.fixture
def pod_and_peer(
    netns_factory: Callable[[str], str], veth_pair: Callable[[str, str, str, str], None]
) -> tuple[str, str]:
    pod, peer = netns_factory("pod"), netns_factory("peer")
    veth_pair(pod, peer, f"{POD_IP}/24", f"{PEER_IP}/24")
    return pod, peer


def _original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def test_traffic_is_redirected(
    pod_and_peer: tuple[str, str],
) -> None:
    pod, peer = pod_and_peer
    ipt.apply(path(pod), PLAN)
    out_l = _listener(pod, 15001)
    in_l = _listener(pod, 15006)
    app_l = _listener(peer, 8080)
    try:
        # outbound: a connection to the peer's app lands on 15001 in the pod
        c = _connect(pod, (PEER_IP, 8080))
        conn, _ = out_l.accept()
        assert _original_dst(conn) == (PEER_IP, 8080)
        conn.close()
        c.close()

        # the ztunnel's own (marked) sockets are not redirected: they reach the peer
        c = _connect(pod, (PEER_IP, 8080), mark=0x539)
        conn, _ = app_l.accept()
        assert conn.getpeername()[0] == POD_IP
        conn.close()
        c.close()

        # inbound: plaintext from the peer to any pod port lands on 15006
        c = _connect(peer, (POD_IP, 7777))
        conn, peer_addr = in_l.accept()
        assert peer_addr[0] == PEER_IP
        assert _original_dst(conn) == (POD_IP, 7777)
        conn.close()
        c.close()
    finally:
        for s in (out_l, in_l, app_l):
            s.close()


def test_hbone_port_and_probe_source_are_exempt(
    netns_factory: Callable[[str], str],
    veth_pair: Callable[[str, str, str, str], None],
) -> None:
    pod, node = netns_factory("pod"), netns_factory("node")
    veth_pair(pod, node, f"{POD_IP}/24", "10.79.0.1/24")
    subprocess.run(["ip", "-n", node, "addr", "add", "10.78.1.1/32", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", pod, "route", "add", "10.78.1.1/32", "dev", "eth0"], check=True)
    ipt.apply(path(pod), PLAN)
    hbone = _listener(pod, 15008)
    app = _listener(pod, 8080)
    try:
        c = _connect(node, (POD_IP, 15008))
        conn, _ = hbone.accept()
        conn.close()
        c.close()

        def probe() -> socket.socket:
            s = socket.socket()
            s.bind(("10.78.1.1", 0))
            s.settimeout(ACCEPT_TIMEOUT)
            s.connect((POD_IP, 8080))
            return s

        c = run_in_netns(path(node), probe)
        conn, src = app.accept()
        assert src[0] == "10.78.1.1"
        conn.close()
        c.close()
    finally:
        hbone.close()
        app.close()


def save6(ns: str) -> str:
    """Our part of the ip6tables filter table, as in the guard's golden file."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ip6tables-legacy-save", "-t", "filter"],
                         check=True, capture_output=True, text=True).stdout
    keep = [ln for ln in out.splitlines() if ln in ("*filter", "COMMIT") or "NODEMESH" in ln]
    return "\n".join(keep) + "\n"


def test_ipv6_guard_matches_golden_is_repaired_and_removed(
    netns_factory: Callable[[str], str],
) -> None:
    ns = netns_factory("pod")
    assert ipt.apply(path(ns), PLAN) is True
    assert save6(ns) == (GOLDEN / "pod-ipv6-guard.golden").read_text()
    assert save6(ns) == guard6.render_ip6tables_save()
    # an agent from before the guard left only the nat rules: read says so, apply adds it
    subprocess.run(["ip", "netns", "exec", ns, "ip6tables-legacy", "-D", "NODEMESH_V6_INPUT",
                    "2"], check=True)
    assert ipt.read(path(ns)) == dataclasses.replace(PLAN, ipv6_guard=False)
    assert ipt.apply(path(ns), PLAN) is True
    assert ipt.read(path(ns)) == PLAN
    assert ipt.apply(path(ns), PLAN) is False
    assert ipt.remove(path(ns)) is True
    assert "NODEMESH" not in save6(ns)
    assert ipt.read(path(ns)) == EMPTY


def test_dual_stack_socket_to_an_ipv4_address_is_captured(
    pod_and_peer: tuple[str, str],
) -> None:
    pod, _ = pod_and_peer
    ipt.apply(path(pod), PLAN)
    ipv6.check_dual_stack_socket_captured(pod, POD_IP, PEER_IP)


def test_ipv6_proper_is_refused_both_ways(
    pod_and_peer: tuple[str, str],
) -> None:
    pod, peer = pod_and_peer
    ipv6.check_ipv6_refused_both_ways(pod, peer, lambda: ipt.apply(path(pod), PLAN))
