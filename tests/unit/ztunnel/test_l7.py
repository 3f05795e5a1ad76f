"""ztunnel.l7: per-request policy inside a splice, over real sockets (socketpairs)."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import re
import socket

from prometheus_client import CollectorRegistry

from meshapi.ids import SpiffeId
from meshapi.policy import Attributes
from ztunnel.http1 import Data, End, Head, MessageParser
from ztunnel.l7 import L7Metrics, L7Splice
from ztunnel.metrics import ConnLabels
from ztunnel.splice import SpliceResult

ATTRS = Attributes(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2"), 8080,
                   peer=SpiffeId("cluster.local", "default", "client"), http_port=True)


def authorize(attrs: Attributes) -> tuple[bool, str]:
    assert attrs.request is not None
    if attrs.request.path.startswith("/admin"):
        return False, "denied by test"
    return True, "ok"


async def app(sock: socket.socket) -> None:
    """A tiny HTTP app: answers each request with its path as body; 101 + echo on Upgrade;
    100 Continue before reading a body announced with Expect."""
    try:
        await _app(sock)
    finally:
        sock.close()


async def _app(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    parser = MessageParser(requests=True)
    buf = bytearray()
    head: Head | None = None
    while True:
        events, used = parser.feed(buf)
        del buf[:used]
        for e in events:
            if isinstance(e, Head):
                head = e
                if e.expect_continue:
                    await loop.sock_sendall(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            elif isinstance(e, Data):
                pass
            elif isinstance(e, End):
                assert head is not None
                if head.upgrade:
                    await loop.sock_sendall(sock, b"HTTP/1.1 101 Switching Protocols\r\n"
                                                  b"Connection: Upgrade\r\nUpgrade: x\r\n\r\n")
                    while data := await loop.sock_recv(sock, 65536):
                        await loop.sock_sendall(sock, b"echo:" + data)
                    return
                body = head.path.encode()
                await loop.sock_sendall(sock, b"HTTP/1.1 200 OK\r\nContent-Length: "
                                        + str(len(body)).encode() + b"\r\n\r\n" + body)
                parser.next_message()
        if events:
            continue
        data = await loop.sock_recv(sock, 65536)
        if not data:
            return
        buf += data


async def setup() -> tuple[socket.socket, L7Splice, asyncio.Task[None], io.StringIO,
                           asyncio.Future[SpliceResult]]:
    loop = asyncio.get_running_loop()
    client, down = socket.socketpair()
    up, server = socket.socketpair()
    for s in (client, server):
        s.setblocking(False)
    done: asyncio.Future[SpliceResult] = loop.create_future()
    log = io.StringIO()
    splice = L7Splice(lambda r: done.set_result(r), attributes=ATTRS, authorize=authorize,
                      metrics=L7Metrics(CollectorRegistry()), labels=ConnLabels("destination"),
                      access_log=log)
    await loop.connect_accepted_socket(lambda: splice.upstream, up)
    await loop.connect_accepted_socket(lambda: splice.downstream, down)
    task = loop.create_task(app(server))
    return client, splice, task, log, done


async def read_until(sock: socket.socket, n_responses: int) -> bytes:
    """Read until ``n_responses`` complete responses arrived."""
    loop = asyncio.get_running_loop()
    parser = MessageParser(requests=False)
    buf = bytearray()
    out = bytearray()
    count = 0
    async with asyncio.timeout(5):
        while count < n_responses:
            events, used = parser.feed(buf)
            out += buf[:used]
            del buf[:used]
            for e in events:
                if isinstance(e, End):
                    if parser.head is not None and parser.head.status != 100:
                        count += 1
                    parser.next_message()
            if events:
                continue
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            buf += data
    return bytes(out)


async def close(client: socket.socket, task: asyncio.Task[None],
                done: asyncio.Future[SpliceResult]) -> None:
    client.close()
    async with asyncio.timeout(5):
        await done
        await task


async def test_denied_request_gets_403_and_the_connection_stays_usable() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, log, done = await setup()
    await loop.sock_sendall(client, b"GET /admin HTTP/1.1\r\nHost: s\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 403 Forbidden") and got.endswith(b"RBAC: access denied")
    await loop.sock_sendall(client, b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"/ok")
    await close(client, task, done)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and '"status":403' in lines[0] and '"rbac":"denied"' in lines[0]


async def test_pipelined_requests_answered_in_order() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"GET /one HTTP/1.1\r\n\r\nGET /admin/x HTTP/1.1\r\n\r\n"
                                    b"POST /three HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                                    b"GET /admin HTTP/1.1\r\nContent-Length: 2\r\n\r\nzz"
                                    b"GET /five HTTP/1.1\r\n\r\n")
    got = await read_until(client, 5)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", got)
    assert statuses == [b"200", b"403", b"200", b"403", b"200"]
    assert got.index(b"/one") < got.index(b"/three") < got.index(b"/five")
    await close(client, task, done)


async def test_chunked_request_and_expect_continue() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"3\r\nabc\r\n0\r\n\r\n")
    assert (await read_until(client, 1)).endswith(b"/c")
    await loop.sock_sendall(client, b"POST /e HTTP/1.1\r\nContent-Length: 2\r\n"
                                    b"Expect: 100-continue\r\n\r\n")
    await asyncio.sleep(0.05)
    await loop.sock_sendall(client, b"hi")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 100 Continue") and got.endswith(b"/e")
    await close(client, task, done)


async def test_denied_expect_continue_is_answered_and_closed() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"POST /admin HTTP/1.1\r\nContent-Length: 2\r\n"
                                    b"Expect: 100-continue\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 403") and b"connection: close" in got
    async with asyncio.timeout(5):
        assert await loop.sock_recv(client, 10) == b""
    await close(client, task, done)


async def test_upgrade_is_passed_through_once_allowed() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\n"
                                    b"Upgrade: websocket\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 101")
    await loop.sock_sendall(client, b"GET /admin HTTP/1.1\r\n\r\n")  # raw bytes now
    async with asyncio.timeout(5):
        data = await loop.sock_recv(client, 100)
    assert data == b"echo:GET /admin HTTP/1.1\r\n\r\n"
    await close(client, task, done)


async def test_malformed_request_gets_400_and_close() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"NOT HTTP\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 400")
    await close(client, task, done)
