from __future__ import annotations

import asyncio
import os

from tests.unit.ztunnel.hbone.harness import CLIENT, SERVER, Harness, poll
from tests.unit.ztunnel.hbone.testca import TestCA


async def test_echo_both_directions_with_half_close(ca: TestCA) -> None:
    async with Harness(ca) as h:
        t, p = await h.open()
        assert t.get_extra_info("peer_identity") == SERVER
        assert t.get_extra_info("tls_version") == "TLSv1.3"
        assert t.get_extra_info("peername") == h.addr
        t.write(b"hello ")
        t.write(b"world")
        await poll(lambda: bytes(p.data) == b"hello world", what="echo")
        req = h.requests[0]
        assert req.authority == "10.0.0.1:8080" and req.target == ("10.0.0.1", 8080)
        assert req.peer_identity == CLIENT and req.tls_version == "TLSv1.3"
        # half-close: our EOF reaches the server, which still writes after it
        t.write_eof()
        sp = h.server_protocols[0]
        await poll(lambda: sp.eof, what="server saw EOF")
        await poll(lambda: p.eof, what="client saw EOF")
        assert await asyncio.wait_for(p.lost, 5) is None
        assert await asyncio.wait_for(sp.lost, 5) is None


async def test_write_after_peer_half_close(ca: TestCA) -> None:
    async with Harness(ca) as h:
        t, p = await h.open()
        await poll(lambda: h.server_protocols, what="accepted")
        sp = h.server_protocols[0]
        sp.echo = False
        assert sp.transport is not None
        sp.transport.write(b"bye")
        sp.transport.write_eof()
        await poll(lambda: p.eof and bytes(p.data) == b"bye", what="client EOF")
        t.write(b"still open")
        await poll(lambda: bytes(sp.data) == b"still open", what="write after peer EOF")
        t.close()
        assert await asyncio.wait_for(p.lost, 5) is None
        assert await asyncio.wait_for(sp.lost, 5) is None


async def test_ten_mib_both_directions_byte_exact(ca: TestCA) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    async with Harness(ca) as h:
        t, p = await h.open()
        for i in range(0, len(payload), 300_000):
            t.write(payload[i : i + 300_000])
        t.write_eof()
        await poll(lambda: p.eof, timeout=60, what="10 MiB echoed")
        assert len(p.data) == len(payload) and bytes(p.data) == payload
        assert bytes(h.server_protocols[0].data) == payload


async def test_many_concurrent_streams_share_one_connection(ca: TestCA) -> None:
    async with Harness(ca) as h:
        opened = await asyncio.gather(*(h.open() for _ in range(50)))
        assert h.connects == 1 and h.pool.connection_count() == 1
        for i, (t, _) in enumerate(opened):
            t.write(f"stream {i}".encode())
            t.write_eof()
        for i, (_, p) in enumerate(opened):
            await poll(lambda p=p: p.eof, what=f"stream {i} EOF")
            assert bytes(p.data) == f"stream {i}".encode()
        assert len(h.server.connections) == 1


async def test_stream_limit_opens_another_connection(ca: TestCA) -> None:
    async with Harness(ca) as h:
        h.pool.max_streams_per_connection = 3
        opened = [await h.open() for _ in range(7)]
        assert h.connects == 3
        for t, p in opened:
            t.abort()
            assert await asyncio.wait_for(p.lost, 5) is None


async def test_backpressure_bounds_sender_buffer(ca: TestCA) -> None:
    async with Harness(ca) as h:
        t, p = await h.open()
        await poll(lambda: h.server_protocols, what="accepted")
        sp = h.server_protocols[0]
        sp.echo = False
        assert sp.transport is not None
        sp.transport.pause_reading()  # slow reader: stops granting window
        chunk = b"x" * 65536
        written = 0
        while not p.paused and written < 64 * 1024 * 1024:
            t.write(chunk)
            written += len(chunk)
            await asyncio.sleep(0)
        assert p.paused == 1, "sender was never paused"
        # the sender's own buffer is bounded, the rest waits in the (bounded) windows
        assert t.get_write_buffer_size() < 2 * 1024 * 1024
        assert written < 32 * 1024 * 1024
        sp.transport.resume_reading()
        await poll(lambda: p.resumed == 1, what="sender resumed")
        t.write_eof()
        sp.echo = True
        await poll(lambda: len(sp.data) == written and sp.eof, timeout=30, what="all delivered")


async def test_connection_loss_fails_all_streams(ca: TestCA) -> None:
    async with Harness(ca) as h:
        opened = await asyncio.gather(*(h.open() for _ in range(5)))
        for conn in list(h.server.connections):
            conn.abort()
        for _, p in opened:
            exc = await asyncio.wait_for(p.lost, 5)
            assert exc is not None
        await poll(lambda: h.pool.connection_count() == 0, what="pool forgot the dead connection")
        t, p = await h.open()  # a new connection works
        assert h.connects == 2
        t.abort()


async def test_server_behind_loop_tls(ca: TestCA) -> None:
    """create_server(..., ssl=context) works too (the loop does the handshake)."""
    async with Harness(ca) as h:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            h.server.protocol_factory, "127.0.0.1", 0, ssl=h.server_cert.server_context
        )
        try:
            h.addr = srv.sockets[0].getsockname()[:2]
            t, p = await h.open()
            assert t.get_extra_info("peer_identity") == SERVER
            t.write(b"via loop tls")
            t.write_eof()
            await poll(lambda: p.eof, what="echo via loop TLS")
            assert bytes(p.data) == b"via loop tls"
            assert h.requests[0].peer_identity == CLIENT
        finally:
            await h.pool.close()
            await h.server.close()
            srv.close()
            await srv.wait_closed()
