"""The HBONE server's bounds over real TCP and TLS on 127.0.0.1 (issue 10, point 3): a peer
that never finishes the TLS handshake, one that finishes it and never sends the HTTP/2 preface, a
connection left without streams, and the caps on connections per peer, in total and on
handshakes in progress. Each refusal closes only its own connection, is counted by reason, and
the server keeps serving."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.ztunnel.hbone.harness import CLIENT, SERVER, TD, Harness, poll
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.certs import CertificateStore
from ztunnel.hbone import HboneServer, LoggingServerEvents


class Limited:
    """A server with the given bounds on its own listener, and a harness client for it."""

    def __init__(self, ca: TestCA, **bounds: Any) -> None:
        self.ca = ca
        self.bounds = bounds
        self.events = LoggingServerEvents()

    async def __aenter__(self) -> Limited:
        self.harness = await Harness(self.ca).__aenter__()
        self.store = CertificateStore(self.ca, TD)
        cert = await self.store.acquire(SERVER)
        self.client_ctx = (await self.store.acquire(CLIENT)).client_context
        self.server = HboneServer(context=cert.server_context, trust_domain=TD,
                                  handler=self.harness.handler, events=self.events,
                                  **self.bounds)
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(self.server.protocol_factory, "127.0.0.1", 0)
        self.addr: tuple[str, int] = self.listener.sockets[0].getsockname()[:2]
        self.harness.addr = self.addr  # the harness' pool talks to this server
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.harness.__aexit__(*exc)
        await self.server.close()
        self.listener.close()
        await self.listener.wait_closed()

    async def serves(self) -> None:
        """A fresh stream through the pool still gets its bytes echoed."""
        t, proto = await self.harness.open()
        t.write(b"ping")
        await poll(lambda: proto.data == b"ping", what="echo after the refusal")
        t.close()


@pytest.fixture
async def raw_conns() -> AsyncIterator[list[asyncio.StreamWriter]]:
    writers: list[asyncio.StreamWriter] = []
    yield writers
    for w in writers:
        w.close()


async def _closed(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """The server ended the connection (EOF or a reset; a GOAWAY may come first) in time."""
    try:
        await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def test_a_handshake_never_finished_is_closed(
    ca: TestCA, raw_conns: list[asyncio.StreamWriter]
) -> None:
    async with Limited(ca, handshake_timeout=0.3) as s:
        reader, writer = await asyncio.open_connection(*s.addr)
        raw_conns.append(writer)
        assert await _closed(reader), "a silent peer kept its connection past the timeout"
        await poll(lambda: s.events.counts["tls_handshake_timeout"] == 1, what="counted")
        await s.serves()


async def test_no_preface_after_tls_is_closed(ca: TestCA) -> None:
    async with Limited(ca, preface_timeout=0.3) as s:
        ctx: ssl.SSLContext = s.client_ctx
        reader, writer = await asyncio.open_connection(*s.addr, ssl=ctx)
        try:
            assert writer.get_extra_info("ssl_object") is not None
            # TLS done, no "PRI * HTTP/2.0" and no SETTINGS: a slowloris after the handshake
            assert await _closed(reader), "a peer without a preface kept its connection"
        finally:
            writer.close()
        await poll(lambda: s.events.counts["preface_timeout"] == 1, what="counted")
        await s.serves()


async def test_a_connection_without_streams_is_closed_when_idle(ca: TestCA) -> None:
    async with Limited(ca, idle_timeout=0.3) as s:
        t, _proto = await s.harness.open()
        t.close()
        await poll(lambda: s.events.counts["idle_timeout"] == 1, timeout=5.0, what="idle close")
        await poll(lambda: s.server.connection_count() == 0, what="the connection gone")
        await s.serves()  # the pool drops the closed connection and opens a new one


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [
        ({"max_connections_per_peer": 2}, "too_many_connections_per_peer"),
        ({"max_connections": 2}, "too_many_connections"),
        ({"max_handshakes": 2, "handshake_timeout": 5.0}, "too_many_handshakes"),
    ],
)
async def test_connection_caps(
    ca: TestCA, raw_conns: list[asyncio.StreamWriter], bounds: dict[str, Any], reason: str
) -> None:
    async with Limited(ca, **bounds) as s:
        # two connections that sit in their TLS handshake hold the two places
        for _ in range(2):
            _reader, writer = await asyncio.open_connection(*s.addr)
            raw_conns.append(writer)
        await poll(lambda: s.server.connection_count() == 2, what="two connections counted")
        reader, writer = await asyncio.open_connection(*s.addr)
        raw_conns.append(writer)
        assert await _closed(reader), f"a third connection was kept ({reason})"
        await poll(lambda: s.events.counts[reason] == 1, what=f"{reason} counted")
        # freeing the places lets a real client in again
        for w in raw_conns:
            w.close()
        raw_conns.clear()
        await poll(lambda: s.server.connection_count() == 0, what="places freed")
        await s.serves()


async def test_caps_hold_no_place_after_the_peer_left(ca: TestCA) -> None:
    async with Limited(ca, max_connections_per_peer=1) as s:
        for _ in range(5):  # each one admitted: the one before gave its place back
            _reader, writer = await asyncio.open_connection(*s.addr, ssl=s.client_ctx)
            assert writer.get_extra_info("ssl_object") is not None
            writer.transport.abort()
            await poll(lambda: s.server.connection_count() == 0, what="place given back")
        assert not s.server.by_peer
        assert s.events.counts["too_many_connections_per_peer"] == 0
