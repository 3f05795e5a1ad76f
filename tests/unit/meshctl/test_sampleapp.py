from __future__ import annotations

import asyncio
import json

from meshctl.sampleapp import HttpApp


async def exchange(request: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpApp("pod-a", "ns-a"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        return data
    finally:
        server.close()
        await server.wait_closed()


async def test_pipelined_keepalive_requests_then_close() -> None:
    data = await exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    parts = data.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"200", b"404"]
    doc = json.loads(parts[0].split(b"\r\n\r\n", 1)[1])
    assert doc["pod"] == "pod-a" and doc["namespace"] == "ns-a"
    assert doc["peer"].startswith("127.0.0.1:")
    assert parts[1].endswith(b"hello")
    assert b"Connection: close" in parts[2]


async def test_malformed_requests_get_400_and_close() -> None:
    assert (await exchange(b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await exchange(b"GET / HTTP/1.1\r\nContent-Length: -3\r\n\r\n")).startswith(
        b"HTTP/1.1 400")
    assert (await exchange(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            ).startswith(b"HTTP/1.1 411")


async def test_bytes_endpoint_serves_the_requested_size() -> None:
    data = await exchange(
        b"GET /bytes/1024 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /bytes/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    first, second = data.split(b"HTTP/1.1 ")[1:]
    head, body = first.split(b"\r\n\r\n", 1)
    assert head.startswith(b"200") and b"Content-Length: 1024" in head
    assert body == b"x" * 1024
    assert second.startswith(b"200") and b"Content-Length: 0\r\n" in second


async def test_bytes_endpoint_rejects_bad_sizes() -> None:
    for target in (b"/bytes/", b"/bytes/-1", b"/bytes/1x", b"/bytes/99999999", b"/bytes/\xb2"):
        data = await exchange(b"GET " + target + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400"), target
