"""Checks shared by both redirection modes' netns tests: the mesh carries IPv4, so a dual-stack
socket's IPv4-mapped connection is captured like any IPv4 one, and IPv6 proper never goes
around the mesh, in either direction (the pod's loopback excepted)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

import pytest

from node_agent.netns import run_in_netns

TIMEOUT = 5.0
POD_IP6 = "fd00:79::2"
PEER_IP6 = "fd00:79::1"
SO_ORIGINAL_DST = 80


def path(ns: str) -> str:
    return f"/run/netns/{ns}"


def v6_connect(ns: str, dst: tuple[str, int], timeout: float = TIMEOUT) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket(socket.AF_INET6)
        try:
            s.settimeout(timeout)
            s.connect(dst)
        except BaseException:
            s.close()
            raise
        return s

    return run_in_netns(path(ns), body)


def listen(ns: str, port: int, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    def body() -> socket.socket:
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        s.listen(8)
        s.settimeout(TIMEOUT)
        return s

    return run_in_netns(path(ns), body)


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def check_dual_stack_socket_captured(pod: str, pod_ip: str, peer_ip: str) -> None:
    """The pod is redirected: an AF_INET6 socket to ``::ffff:<peer_ip>`` lands on the pod's
    15001 with its original destination; to mapped loopback it stays in the pod."""
    out_l, app_l, lo_l = listen(pod, 15001), listen(pod, 8080), listen(pod, 7070)
    try:
        c = v6_connect(pod, (f"::ffff:{peer_ip}", 8080))
        conn, src = out_l.accept()
        assert src[0] == pod_ip
        assert original_dst(conn) == (peer_ip, 8080)
        conn.sendall(b"y")
        assert c.recv(1) == b"y"
        conn.close()
        c.close()
        c = v6_connect(pod, ("::ffff:127.0.0.1", 7070))
        lo_l.accept()[0].close()
        c.close()
    finally:
        for s in (out_l, app_l, lo_l):
            s.close()


def check_ipv6_refused_both_ways(pod: str, peer: str, redirect: Callable[[], None]) -> None:
    """IPv6 works between ``pod`` and ``peer`` until ``redirect()`` enrolls the pod; then the
    pod's outgoing IPv6 TCP is refused, incoming IPv6 TCP never reaches its app, and ``::1``
    inside the pod still works."""
    for ns, addr in ((pod, POD_IP6), (peer, PEER_IP6)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"],
                       check=True)
    app_in_pod = listen(pod, 8080, socket.AF_INET6)
    app_on_peer = listen(peer, 8080, socket.AF_INET6)
    try:
        v6_connect(pod, (PEER_IP6, 8080)).close()
        app_on_peer.accept()[0].close()
        v6_connect(peer, (POD_IP6, 8080)).close()
        app_in_pod.accept()[0].close()

        redirect()
        with pytest.raises((PermissionError, ConnectionRefusedError)):
            v6_connect(pod, (PEER_IP6, 8080))
        with pytest.raises(OSError):  # dropped: the SYN never gets an answer
            v6_connect(peer, (POD_IP6, 8080), timeout=1.5)
        v6_connect(pod, ("::1", 8080)).close()
        app_in_pod.accept()[0].close()
    finally:
        app_in_pod.close()
        app_on_peer.close()
