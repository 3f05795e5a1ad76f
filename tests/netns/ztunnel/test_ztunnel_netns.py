"""The ztunnel's per-pod machinery in real network namespaces (root)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshapi import zds
from meshapi.constants import ZTUNNEL_SOCKET_MARK
from tests.netns.ztunnel.harness import (
    CAPTURE,
    Echo,
    Ztunnel,
    app_connect,
    echo_server,
    listening_ports,
    netns_fd,
    roundtrip,
    sh,
)
from tests.unit.ztunnel.helpers import workload
from ztunnel.netns import connect_marked
from ztunnel.zds import ZdsServer, recv_packet

pytestmark = pytest.mark.root

NetnsFactory = Callable[[str], str]
VethPair = Callable[..., None]


@pytest.fixture
async def zt() -> AsyncIterator[Ztunnel]:
    z = Ztunnel()
    try:
        yield z
    finally:
        await z.close()


async def _zds_request(sock: socket.socket, msg: zds.Message, fds: list[int] | None = None
                       ) -> zds.Ack:
    socket.send_fds(sock, [zds.encode(msg)], fds or [])
    async with asyncio.timeout(10):
        data, _ = await recv_packet(sock)
    reply = zds.decode(data)
    assert isinstance(reply, zds.Ack)
    return reply


async def test_zds_add_opens_listeners_in_the_pod_netns_and_delete_closes_them(
    zt: Ztunnel, netns_factory: NetnsFactory, tmp_path: Path
) -> None:
    ns = netns_factory("pod")
    pod = workload("web", "10.90.0.1")
    path = tmp_path / "ztunnel.sock"
    server = ZdsServer(path, zt.pods, zt.metrics, node="node-1")
    task = asyncio.create_task(server.run())
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    agent.setblocking(False)
    try:
        async with asyncio.timeout(5):
            await server.listening.wait()
            await asyncio.get_running_loop().sock_connect(agent, str(path))
            hello, _ = await recv_packet(agent)
        assert zds.decode(hello) == zds.Hello(())
        fd = netns_fd(ns)
        try:
            assert (await _zds_request(agent, zds.AddPod(1, pod), [fd])).error is None
        finally:
            os.close(fd)
        assert {15001, 15006, 15008} <= listening_ports(ns)
        assert 15001 not in listening_ports_host()  # the host netns is untouched
        assert zt.pods.served() == [pod.uid]
        assert zt.sample("nodemesh_ztunnel_pods_served") == 1
        assert [i.identity for i in zt.certs.infos()] == [pod.identity]

        assert (await _zds_request(agent, zds.DeletePod(2, pod.uid))).error is None
        assert listening_ports(ns) == set()
        assert zt.pods.served() == []
        assert zt.certs.infos() == []
    finally:
        agent.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def listening_ports_host() -> set[int]:
    import subprocess

    out = subprocess.run(["ss", "-ltnH"], check=True, capture_output=True, text=True).stdout
    return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines() if line.strip()}


async def test_marked_socket_from_inside_a_netns(
    zt: Ztunnel, netns_factory: NetnsFactory
) -> None:
    ns = netns_factory("mark")
    sh(ns, "iptables-legacy", "-A", "OUTPUT", "-m", "mark", "--mark", "0x539", "-j", "ACCEPT")
    server = await echo_server(zt.executor, ns, 9100)
    fd = netns_fd(ns)
    try:
        sock = await connect_marked(zt.executor, fd, ("127.0.0.1", 9100), 5.0)
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == ZTUNNEL_SOCKET_MARK
            assert await roundtrip(sock, b"ping") == b"ping"
    finally:
        os.close(fd)
        server.close()
    counters = sh(ns, "iptables-legacy", "-L", "OUTPUT", "-v", "-n", "-x")
    marked_packets = int(next(line for line in counters.splitlines()
                              if "0x539" in line).split()[0])
    assert marked_packets > 0


async def test_outbound_passthrough_with_iptables_redirect(
    zt: Ztunnel, netns_factory: NetnsFactory, veth_pair: VethPair
) -> None:
    pod_ns, srv_ns = netns_factory("pod"), netns_factory("srv")
    veth_pair(pod_ns, srv_ns, "10.90.1.1/24", "10.90.1.2/24")
    pod = workload("client", "10.90.1.1")
    fd = netns_fd(pod_ns)
    await zt.pods.add(pod, fd)  # ownership of fd passes to the pod manager
    sh(pod_ns, *CAPTURE)
    Echo.peers.clear()
    server = await echo_server(zt.executor, srv_ns, 9000)
    try:
        client = await app_connect(zt.executor, pod_ns, ("10.90.1.2", 9000))
        with client:
            assert await roundtrip(client, b"hello through 15001") == b"hello through 15001"
        # the server saw the pod's own address: the ztunnel connected from the pod netns
        assert Echo.peers[0][0] == "10.90.1.1"
        record = zt.connlog.recent(1)[0]
        assert record["direction"] == "outbound"
        assert record["dst"] == "10.90.1.2:9000"  # SO_ORIGINAL_DST, not 127.0.0.1:15001
        assert record["securityPolicy"] == "none"
        # a connection to the pod's own capture port is refused, not looped
        loop_client = await app_connect(zt.executor, pod_ns, ("10.90.1.1", 15001))
        with loop_client:
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionResetError):
                    data = await asyncio.get_running_loop().sock_recv(loop_client, 10)
                    assert data == b""
                    raise ConnectionResetError
        assert zt.sample("nodemesh_ztunnel_refused_connections_total",
                         direction="outbound", reason="loop") == 1
    finally:
        server.close()


async def test_hbone_end_to_end_between_two_pods(
    zt: Ztunnel, netns_factory: NetnsFactory, veth_pair: VethPair
) -> None:
    a_ns, b_ns = netns_factory("a"), netns_factory("b")
    veth_pair(a_ns, b_ns, "10.91.0.1/24", "10.91.0.2/24")
    a = workload("alice", "10.91.0.1")
    b = workload("bob", "10.91.0.2")
    zt.set_workloads(a, b)
    await zt.pods.add(a, netns_fd(a_ns))
    await zt.pods.add(b, netns_fd(b_ns))
    sh(a_ns, *CAPTURE)
    Echo.peers.clear()
    app = await echo_server(zt.executor, b_ns, 8080)
    try:
        client = await app_connect(zt.executor, a_ns, ("10.91.0.2", 8080))
        with client:
            payload = os.urandom(256 * 1024)
            assert await roundtrip(client, payload) == payload
        inbound, outbound = zt.connlog.recent(2)
        assert outbound["direction"] == "outbound" and inbound["direction"] == "inbound"
        assert outbound["securityPolicy"] == inbound["securityPolicy"] == "mutual_tls"
        assert inbound["tlsVersion"] == "TLSv1.3"
        assert inbound["srcIdentity"] == str(a.identity)
        assert inbound["dstIdentity"] == str(b.identity)
        assert inbound["src"].startswith("10.91.0.1:")
        assert inbound["dst"] == "10.91.0.2:8080"
        # the app saw a connection from inside its own netns (the ztunnel's marked socket)
        assert Echo.peers[0][0] == "10.91.0.2"
        assert zt.sample(
            "istio_tcp_connections_opened_total", reporter="destination",
            source_workload="alice", source_workload_namespace="default",
            source_principal=str(a.identity), destination_workload="bob",
            destination_workload_namespace="default", destination_principal=str(b.identity),
            destination_service="unknown", connection_security_policy="mutual_tls",
            response_flags="-",
        ) == 1

        # plaintext straight to bob's 15006 (marked, so not captured in alice): STRICT → RST
        fd = netns_fd(a_ns)
        try:
            plain = await connect_marked(zt.executor, fd, ("10.91.0.2", 15006), 5.0)
        finally:
            os.close(fd)
        with plain:
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionResetError):
                    await asyncio.get_running_loop().sock_recv(plain, 10)
        assert zt.sample("nodemesh_ztunnel_refused_connections_total",
                         direction="inbound", reason="plaintext_strict") == 1
    finally:
        app.close()


async def _connect_and_hold(zt: Ztunnel, ns: str, addr: tuple[str, int]) -> socket.socket:
    client = await app_connect(zt.executor, ns, addr)
    assert await roundtrip(client, b"hello") == b"hello"
    return client


@pytest.mark.parametrize("first", ["alice-1", "alice-2"])
async def test_two_pods_of_one_identity_each_tunnel_from_their_own_ip(
    zt: Ztunnel, netns_factory: NetnsFactory, veth_pair: VethPair, first: str
) -> None:
    """Two pods with one service account on one node: each pod's connection reaches the
    destination from its own IP (never on the other pod's tunnel), in either order, and
    deleting one pod leaves the other's established connection working."""
    a1_ns, a2_ns, b_ns = netns_factory("a1"), netns_factory("a2"), netns_factory("b")
    veth_pair(a1_ns, b_ns, "10.91.0.1/24", "10.91.0.2/24")
    veth_pair(a2_ns, b_ns, "10.92.0.1/24", "10.92.0.2/24", dev_b="eth1")
    sh(a2_ns, "ip", "route", "add", "10.91.0.2/32", "via", "10.92.0.2")
    pods = {"alice-1": workload("alice-1", "10.91.0.1", sa="alice"),
            "alice-2": workload("alice-2", "10.92.0.1", sa="alice")}
    netns = {"alice-1": a1_ns, "alice-2": a2_ns}
    b = workload("bob", "10.91.0.2")
    zt.set_workloads(*pods.values(), b)
    for name, w in pods.items():
        await zt.pods.add(w, netns_fd(netns[name]))
        sh(netns[name], *CAPTURE)
    await zt.pods.add(b, netns_fd(b_ns))
    app = await echo_server(zt.executor, b_ns, 8080)
    second = "alice-2" if first == "alice-1" else "alice-1"
    try:
        held = await _connect_and_hold(zt, netns[first], ("10.91.0.2", 8080))
        other = await _connect_and_hold(zt, netns[second], ("10.91.0.2", 8080))
        inbound = [r for r in zt.connlog.recent(10) if r["direction"] == "inbound"]
        by_src = sorted(r["src"].split(":")[0] for r in inbound)
        assert by_src == ["10.91.0.1", "10.92.0.1"], inbound
        assert {r["srcIdentity"] for r in inbound} == {str(pods[first].identity)}
        # the pod that connected first goes away; the other's tunnel is its own
        await zt.pods.delete(str(pods[first].uid))
        held.close()
        with other:
            assert await roundtrip(other, b"still here") == b"still here"
    finally:
        app.close()


SO_NETNS_COOKIE = 71  # Linux >= 5.14: identifies the network namespace a socket lives in


def own_cookie() -> int:
    with socket.socket() as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


async def test_marked_socket_reserve_is_in_the_pod_netns_and_closed_on_forget(
    netns_factory: NetnsFactory,
) -> None:
    from ztunnel.netns import RESERVE_BATCH, NetnsExecutor, netns_inode

    ns = netns_factory("reserve")
    fd = netns_fd(ns)
    executor = NetnsExecutor()
    try:
        first = await executor.marked_socket(fd)
        second = await executor.marked_socket(fd)  # from the reserve
        for sock in (first, second):
            with sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x539
                # the socket lives in the pod's namespace, not ours
                cookie = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
                assert int.from_bytes(cookie, "little") != own_cookie()
        reserve = executor._reserve[fd]
        assert 0 < len(reserve) <= RESERVE_BATCH
        kept = list(reserve)
        executor.forget(fd)
        assert all(s.fileno() == -1 for s in kept)
        assert netns_inode(fd) > 0
    finally:
        executor.close()
        os.close(fd)


def test_mesh_port_held_by_an_app_connection_says_why(netns_factory: NetnsFactory) -> None:
    """A pod whose ephemeral range includes 15006 may hold it with one of its own connections:
    the ztunnel's error says so, and how to keep the mesh's ports free."""
    from node_agent.netns import run_in_netns
    from ztunnel.errors import NetnsError
    from ztunnel.netns import listening_socket

    ns = netns_factory("pod")
    sh(ns, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000")

    def body() -> str:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        app = socket.socket()  # an app's connection that happens to use local port 15006
        app.bind(("127.0.0.1", 15006))
        app.connect(server.getsockname())
        try:
            with pytest.raises(NetnsError) as held:
                listening_socket(15006)
            with open("/proc/sys/net/ipv4/ip_local_reserved_ports", "w") as f:
                f.write("15000-15100")
            with pytest.raises(NetnsError) as reserved:
                listening_socket(15006)
            return f"{held.value}\n{reserved.value}"
        finally:
            app.close()
            server.close()

    held, reserved = run_in_netns(f"/run/netns/{ns}", body).split("\n")
    assert "Address already in use" in held
    assert "ephemeral port range 1024-65000 includes 15006" in held
    assert "ip_local_reserved_ports" in held
    # reserved: the hint no longer applies (nor would the app get 15006 from the kernel)
    assert "Address already in use" in reserved and "ephemeral" not in reserved
