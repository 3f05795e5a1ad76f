"""An HBONE server and pool on 127.0.0.1 with real TLS, plus small test protocols."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshapi.ids import SpiffeId
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.certs import CertificateStore
from ztunnel.hbone import (
    Accept,
    ConnectRequest,
    HbonePool,
    HboneServer,
    LoggingServerEvents,
    Reject,
)

TD = "cluster.local"
CLIENT = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/client")
SERVER = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/server")


async def poll(
    cond: Callable[[], object],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.005)


class Collector(asyncio.Protocol):
    """Collects a stream's bytes; optionally echoes them."""

    def __init__(self, echo: bool = False) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.echo = echo
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.echo:
            assert self.transport is not None
            self.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Harness:
    def __init__(self, ca: TestCA, handler: Any = None) -> None:
        self.ca = ca
        self.server_protocols: list[Collector] = []
        self.requests: list[ConnectRequest] = []
        self.events = LoggingServerEvents()
        self.connects = 0
        self._handler = handler

    async def handler(self, req: ConnectRequest) -> Accept | Reject:
        self.requests.append(req)
        if self._handler is not None:
            result: Accept | Reject = await self._handler(req)
            return result

        def factory(t: asyncio.Transport) -> asyncio.Protocol:
            p = Collector(echo=True)
            self.server_protocols.append(p)
            return p

        return Accept(factory)

    async def __aenter__(self) -> Harness:
        loop = asyncio.get_running_loop()
        self.server_store = CertificateStore(self.ca, TD)
        self.client_store = CertificateStore(self.ca, TD)
        self.server_cert = await self.server_store.acquire(SERVER)
        self.server = HboneServer(
            context=self.server_cert.server_context, trust_domain=TD, handler=self.handler,
            events=self.events,
        )
        self.listener = await loop.create_server(self.server.protocol_factory, "127.0.0.1", 0)
        self.addr: tuple[str, int] = self.listener.sockets[0].getsockname()[:2]
        self.pool = HbonePool(self.client_store, connect_timeout=5.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()
        await self.server.close()
        self.listener.close()
        await self.listener.wait_closed()
        self.server_store.release(SERVER)

    async def connect_socket(self, peer: tuple[str, int]) -> socket.socket:
        self.connects += 1
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        await loop.sock_connect(s, peer)
        return s

    async def open(
        self, protocol: asyncio.Protocol | None = None, *, dst: SpiffeId = SERVER,
        authority: str = "10.0.0.1:8080",
    ) -> tuple[asyncio.Transport, Collector]:
        proto = protocol or Collector()
        assert isinstance(proto, Collector)
        t = await self.pool.open_stream(
            src=CLIENT, dst=dst, peer=self.addr, authority=authority,
            connect_socket=self.connect_socket, protocol=proto,
        )
        return t, proto


Handler = Callable[[ConnectRequest], Awaitable[Accept | Reject]]
