"""A ztunnel without its controller: real PodManager, netns executor, HBONE server and pool,
certificates from a test CA, a hand-filled discovery view."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess

from meshapi.discovery import Snapshot
from meshapi.model import Workload
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.certs import CertificateStore
from ztunnel.connlog import ConnLog
from ztunnel.conntrack import ConnTracker
from ztunnel.hbone.client import HbonePool
from ztunnel.hbone.server import HboneServer
from ztunnel.inbound import InboundHandler, PlaintextInbound
from ztunnel.metrics import HboneEvents, Metrics
from ztunnel.netns import NetnsExecutor
from ztunnel.outbound import OutboundProxy
from ztunnel.pods import PodHandlers, PodManager
from ztunnel.runtime import PodContext, PodRuntime
from ztunnel.seams import HboneListener, MeshView

TD = "cluster.local"


def netns_fd(name: str) -> int:
    return os.open(f"/run/netns/{name}", os.O_RDONLY)


def listening_ports(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"], check=True,
                         capture_output=True, text=True).stdout
    return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines() if line.strip()}


def sh(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True,
                          text=True).stdout


class Ztunnel:
    def __init__(self) -> None:
        self.ca = TestCA()
        self.metrics = Metrics()
        self.log_stream = io.StringIO()
        self.connlog = ConnLog(self.metrics, stream=self.log_stream)
        self.view = MeshView()
        self.executor = NetnsExecutor()
        self.certs = CertificateStore(self.ca, TD)
        self.outbound = OutboundProxy(view=self.view, executor=self.executor,
                                      metrics=self.metrics)

        def hbone_server(pod: PodRuntime, context: object) -> HboneListener:
            handler = InboundHandler(pod=pod, view=self.view, executor=self.executor,
                                     metrics=self.metrics, trust_domain=TD)
            return HboneServer(context=context, trust_domain=TD,  # type: ignore[arg-type]
                               handler=handler, events=HboneEvents(self.metrics, pod.uid))

        self.pods = PodManager(
            executor=self.executor, certs=self.certs,
            handlers=PodHandlers(self.outbound.protocol_factory,
                                 lambda pod: PlaintextInbound(pod, self.metrics), hbone_server),
            metrics=self.metrics,
            context=lambda w: PodContext(
                pool=HbonePool(self.certs, connect_timeout=5.0),
                tracker=ConnTracker(w, self.connlog, lambda ip: self.view.index.by_ip.get(ip))),
        )

    def set_workloads(self, *workloads: Workload) -> None:
        change = self.view.state.apply(Snapshot("test", 1, tuple(workloads), ()))
        self.view.changed(change)

    async def close(self) -> None:
        await self.pods.close()
        self.executor.close()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Echo.peers.append(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    peers: list[tuple[str, int]] = []


async def echo_server(executor: NetnsExecutor, ns: str, port: int) -> asyncio.Server:
    """An echo app listening on 0.0.0.0:port inside ``ns`` (unmarked, like an app)."""
    fd = netns_fd(ns)
    try:
        def make() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            s.setblocking(False)
            return s

        sock = await executor.run(fd, make)
    finally:
        os.close(fd)
    return await asyncio.get_running_loop().create_server(Echo, sock=sock)


async def app_connect(executor: NetnsExecutor, ns: str, addr: tuple[str, int],
                      ) -> socket.socket:
    """An UNMARKED client socket in ``ns`` (so capture applies), connected on the loop."""
    fd = netns_fd(ns)
    try:
        def make() -> socket.socket:
            s = socket.socket()
            s.setblocking(False)
            return s

        sock = await executor.run(fd, make)
    finally:
        os.close(fd)
    async with asyncio.timeout(5):
        await asyncio.get_running_loop().sock_connect(sock, addr)
    return sock


async def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, payload)
    got = b""
    async with asyncio.timeout(10):
        while len(got) < len(payload):
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            got += chunk
    return got


CAPTURE = ["iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "!",
           "--mark", "0x539", "-j", "REDIRECT", "--to-ports", "15001"]
