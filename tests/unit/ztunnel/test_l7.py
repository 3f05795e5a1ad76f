"""ztunnel.l7: per-request policy inside a splice, over real sockets (socketpairs)."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import re
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry

from meshapi.httppath import PathNormalization
from meshapi.ids import SpiffeId
from meshapi.policy import Attributes
from ztunnel.http1 import REJECT_REASONS, Data, End, Head, MessageParser
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
                if head.method == "CONNECT":
                    await loop.sock_sendall(sock, b"HTTP/1.1 200 Connection established\r\n\r\n")
                    while data := await loop.sock_recv(sock, 65536):
                        await loop.sock_sendall(sock, b"tunnel:" + data)
                    return
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


async def setup(**options: Any) -> tuple[socket.socket, L7Splice, asyncio.Task[None],
                                         io.StringIO, asyncio.Future[SpliceResult]]:
    loop = asyncio.get_running_loop()
    client, down = socket.socketpair()
    for s, opt, size in options.pop("buffers", ()):
        (client if s == "client" else down).setsockopt(socket.SOL_SOCKET, opt, size)
    up, server = socket.socketpair()
    for s in (client, server):
        s.setblocking(False)
    done: asyncio.Future[SpliceResult] = loop.create_future()
    log = io.StringIO()
    splice = L7Splice(lambda r: done.set_result(r), attributes=ATTRS, authorize=authorize,
                      metrics=L7Metrics(CollectorRegistry()), labels=ConnLabels("destination"),
                      access_log=log, **options)
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
    await loop.sock_sendall(client, b"GET /one HTTP/1.1\r\nHost: s\r\n\r\n"
                                    b"GET /admin/x HTTP/1.1\r\nHost: s\r\n\r\n"
                                    b"POST /three HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n"
                                    b"\r\nabc"
                                    b"GET /admin HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n"
                                    b"\r\nzz"
                                    b"GET /five HTTP/1.1\r\nHost: s\r\n\r\n")
    got = await read_until(client, 5)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", got)
    assert statuses == [b"200", b"403", b"200", b"403", b"200"]
    assert got.index(b"/one") < got.index(b"/three") < got.index(b"/five")
    await close(client, task, done)


async def test_chunked_request_and_expect_continue() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"POST /c HTTP/1.1\r\nHost: s\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n"
                                    b"3\r\nabc\r\n0\r\n\r\n")
    assert (await read_until(client, 1)).endswith(b"/c")
    await loop.sock_sendall(client, b"POST /e HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n"
                                    b"Expect: 100-continue\r\n\r\n")
    await asyncio.sleep(0.05)
    await loop.sock_sendall(client, b"hi")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 100 Continue") and got.endswith(b"/e")
    await close(client, task, done)


async def test_denied_expect_continue_is_answered_and_closed() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"POST /admin HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n"
                                    b"Expect: 100-continue\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 403") and b"connection: close" in got
    async with asyncio.timeout(5):
        assert await loop.sock_recv(client, 10) == b""
    await close(client, task, done)


async def test_upgrade_is_passed_through_once_allowed() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\n"
                                    b"Upgrade: websocket\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 101")
    await loop.sock_sendall(client, b"GET /admin HTTP/1.1\r\nHost: s\r\n\r\n")  # raw bytes now
    async with asyncio.timeout(5):
        data = await loop.sock_recv(client, 100)
    assert data == b"echo:GET /admin HTTP/1.1\r\nHost: s\r\n\r\n"
    await close(client, task, done)


async def test_malformed_request_gets_400_and_close() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"NOT HTTP\r\n\r\n")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 400")
    await close(client, task, done)


async def test_rejection_is_answered_counted_once_and_spares_other_connections() -> None:
    """Issue 10: the '-6' chunk froze the whole ztunnel; now it is one 400 on one connection."""
    loop = asyncio.get_running_loop()
    rejected: list[str] = []
    client, _, task, _, done = await setup(reject=rejected.append)
    other, _, other_task, _, other_done = await setup(reject=rejected.append)
    await loop.sock_sendall(client, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                                    b"\r\n\r\n-6\r\nX")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 400") and b"chunk size" in got
    async with asyncio.timeout(5):
        assert await loop.sock_recv(client, 10) == b""
    assert rejected == ["http_chunk_size"]
    await loop.sock_sendall(other, b"GET /fine HTTP/1.1\r\nHost: s\r\n\r\n")
    assert (await read_until(other, 1)).endswith(b"/fine")
    await close(client, task, done)
    await close(other, other_task, other_done)
    assert set(rejected) <= set(REJECT_REASONS)


async def test_every_kind_of_rejection_is_counted_with_its_reason() -> None:
    loop = asyncio.get_running_loop()
    cases = [
        (b"GET / HTTP/1.1\nHost: h\n\n", "http_bare_lf", b"400"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \xd9\xa1\r\n\r\n",
         "http_content_length", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", "http_host", b"400"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         "http_transfer_encoding", b"501"),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 200 + b"\r\n",
         "http_head_too_large", b"431"),
        (b"GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n", "http_path", b"400"),
    ]
    for raw, reason, status in cases:
        rejected: list[str] = []
        client, _, task, _, done = await setup(reject=rejected.append)
        await loop.sock_sendall(client, raw)
        got = await read_until(client, 1)
        assert got.startswith(b"HTTP/1.1 " + status), (raw, got)
        assert rejected == [reason], raw
        await close(client, task, done)


async def test_policy_matches_the_normalized_path_without_query() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    for target, status in ((b"/x/../admin", b"403"), (b"//admin/y", b"403"),
                           (b"/%61dmin", b"403"), (b"/x\\..\\admin", b"403"),
                           (b"/ok?next=/admin", b"200"), (b"http://s/admin", b"403")):
        await loop.sock_sendall(client, b"GET " + target + b" HTTP/1.1\r\nHost: s\r\n\r\n")
        got = await read_until(client, 1)
        assert got.startswith(b"HTTP/1.1 " + status), (target, got)
    await close(client, task, done)


async def test_path_normalization_is_the_mesh_setting() -> None:
    loop = asyncio.get_running_loop()
    mode = [PathNormalization.NONE]
    client, _, task, _, done = await setup(path_normalization=lambda: mode[0])
    await loop.sock_sendall(client, b"GET /x/../admin HTTP/1.1\r\nHost: s\r\n\r\n")
    assert (await read_until(client, 1)).startswith(b"HTTP/1.1 200")  # NONE: as sent
    mode[0] = PathNormalization.BASE  # read per request: a new snapshot applies at once
    await loop.sock_sendall(client, b"GET /x/../admin HTTP/1.1\r\nHost: s\r\n\r\n")
    assert (await read_until(client, 1)).startswith(b"HTTP/1.1 403")
    await close(client, task, done)


async def test_lower_case_method_is_refused() -> None:
    loop = asyncio.get_running_loop()
    rejected: list[str] = []
    client, _, task, _, done = await setup(reject=rejected.append)
    await loop.sock_sendall(client, b"delete /x HTTP/1.1\r\nHost: s\r\n\r\n")
    assert (await read_until(client, 1)).startswith(b"HTTP/1.1 400")
    assert rejected == ["http_method"]
    await close(client, task, done)


async def test_slow_request_head_gets_408() -> None:
    loop = asyncio.get_running_loop()
    rejected: list[str] = []
    client, _, task, _, done = await setup(reject=rejected.append, head_timeout=0.2)
    await loop.sock_sendall(client, b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\n")
    assert (await read_until(client, 1)).endswith(b"/ok")  # a complete head is fine
    started = time.monotonic()
    await loop.sock_sendall(client, b"GET /slow HTTP/1.1\r\nX-A: ")
    got = await read_until(client, 1)
    assert got.startswith(b"HTTP/1.1 408") and time.monotonic() - started >= 0.15
    assert rejected == ["http_head_timeout"]
    async with asyncio.timeout(5):
        assert await loop.sock_recv(client, 10) == b""
    await close(client, task, done)


async def test_idle_keep_alive_connection_is_closed() -> None:
    loop = asyncio.get_running_loop()
    rejected: list[str] = []
    client, _, task, _, done = await setup(reject=rejected.append, idle_timeout=0.2)
    await loop.sock_sendall(client, b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\n")
    assert (await read_until(client, 1)).endswith(b"/ok")
    async with asyncio.timeout(5):
        assert await loop.sock_recv(client, 10) == b""
    assert rejected == ["http_idle_timeout"]
    await close(client, task, done)


async def test_client_that_never_reads_its_403s_is_not_parsed_further() -> None:
    """Pipelined denied requests answered by us must not pile up in our write buffer."""
    loop = asyncio.get_running_loop()
    small = [("client", socket.SO_RCVBUF, 4096), ("down", socket.SO_SNDBUF, 4096)]
    client, splice, task, _, done = await setup(buffers=small)
    request = b"GET /admin HTTP/1.1\r\nHost: s\r\n\r\n"
    count = 12000  # ~400 KiB of requests, ~1.4 MiB of 403s
    sender = loop.create_task(loop.sock_sendall(client, request * count))
    transport = splice.downstream.transport
    assert transport is not None
    async with asyncio.timeout(10):
        while not splice.downstream.reading_paused or splice.requests == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # would the buffer keep growing?
    assert transport.get_write_buffer_size() < 256 * 1024
    assert splice.requests < count
    got = await read_until(client, count)  # reading resumes the parsing, to the end
    assert got.count(b"HTTP/1.1 403") == count
    await sender
    await close(client, task, done)


async def test_connect_answered_2xx_becomes_a_tunnel() -> None:
    loop = asyncio.get_running_loop()
    client, _, task, _, done = await setup()
    await loop.sock_sendall(client, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
    got = b""
    async with asyncio.timeout(5):
        while not got.endswith(b"\r\n\r\n"):
            got += await loop.sock_recv(client, 100)
    assert got == b"HTTP/1.1 200 Connection established\r\n\r\n"
    await loop.sock_sendall(client, b"not http at all\n")
    async with asyncio.timeout(5):
        assert await loop.sock_recv(client, 100) == b"tunnel:not http at all\n"
    await close(client, task, done)
