from __future__ import annotations

import asyncio
import gc
import socket
import weakref

from ztunnel.splice import Splice, SpliceResult


async def _recv_all(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


async def _pair() -> tuple[socket.socket, socket.socket, Splice, asyncio.Future[SpliceResult]]:
    """client <-> [downstream | splice | upstream] <-> server"""
    loop = asyncio.get_running_loop()
    client, down = socket.socketpair()
    up, server = socket.socketpair()
    for s in (client, server):
        s.setblocking(False)
    done: asyncio.Future[SpliceResult] = loop.create_future()
    splice = Splice(lambda r: done.set_result(r))
    await loop.connect_accepted_socket(lambda: splice.upstream, up)
    await loop.connect_accepted_socket(lambda: splice.downstream, down)
    return client, server, splice, done


async def test_bytes_both_ways_half_close_and_counters() -> None:
    loop = asyncio.get_running_loop()
    client, server, _splice, done = await _pair()
    payload = bytes(range(256)) * 4096  # 1 MiB: exercises backpressure
    send = loop.create_task(loop.sock_sendall(client, payload))
    async with asyncio.timeout(10):
        got = await _recv_all(loop, server, len(payload))
        await send
    assert got == payload
    client.shutdown(socket.SHUT_WR)  # half-close: server sees EOF, can still answer
    async with asyncio.timeout(5):
        assert await loop.sock_recv(server, 1) == b""
    await loop.sock_sendall(server, b"answer")
    async with asyncio.timeout(5):
        assert await _recv_all(loop, client, 6) == b"answer"
    server.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(5):
        result = await done
    assert result == SpliceResult(len(payload), 6, None)
    client.close()
    server.close()


async def test_close_from_one_side_closes_the_other_and_breaks_cycles() -> None:
    loop = asyncio.get_running_loop()
    client, server, splice, done = await _pair()
    ref = weakref.ref(splice)
    side_ref = weakref.ref(splice.downstream)
    del splice
    client.close()  # seen as EOF: passed on as a half-close
    async with asyncio.timeout(5):
        assert await loop.sock_recv(server, 10) == b""
    server.close()
    async with asyncio.timeout(5):
        await done
    await asyncio.sleep(0)
    gc.disable()
    try:
        # no cycle keeps them: dropping the last references frees them without the gc
        assert ref() is None or gc.get_referrers(ref()) == []
        assert side_ref() is None
    finally:
        gc.enable()


async def test_abort_before_upstream_attached_finishes() -> None:
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    results: list[SpliceResult] = []

    def on_done(result: SpliceResult) -> None:
        results.append(result)
        finished.set()

    splice = Splice(on_done)
    client, down = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(lambda: splice.downstream, down)
    splice.abort("upstream failed")
    async with asyncio.timeout(5):
        await finished.wait()
    assert results[0].error == "upstream failed"
    assert transport.is_closing()
    client.close()
