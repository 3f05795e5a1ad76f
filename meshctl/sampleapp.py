"""The local cluster's workload: a small HTTP/1.1 app (keep-alive, pipelining), or a pause process.

``python -m meshctl.sampleapp --port 8080 --name server-1 --namespace default``
  ``GET /``     -> ``{"pod": ..., "namespace": ..., "peer": "ip:port"}``
  ``/echo``     -> the request body back (any method)
  ``/bytes/N``  -> N bytes (``x``), 0 <= N <= MAX_BYTES: a response of a chosen size, e.g. the
                   benchmark's 1 KiB (``/bytes/1024``)
``python -m meshctl.sampleapp --pause`` sleeps until signalled (pods without an app).

It is the workload, not the mesh, but the benchmark measures through it, so it must not be the
bottleneck or add latency of its own: one asyncio (uvloop) protocol, ``TCP_NODELAY``, each
response written with one ``write`` (the threaded ``http.server`` it replaces wrote headers and
body separately and met Nagle's algorithm and delayed ACKs: 40 ms per request), no per-request log.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import socket
import sys
from typing import Final, cast

MAX_BODY: Final = 16 * 1024 * 1024
MAX_HEAD: Final = 64 * 1024
MAX_BYTES: Final = 1024 * 1024
REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
                  413: "Payload Too Large", 431: "Request Header Fields Too Large"}


def response(status: int, body: bytes, content_type: str, *, close: bool,
             head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode()
    return head if head_only else head + body


@functools.lru_cache(maxsize=64)
def _filler(size: int) -> bytes:
    return b"x" * size


class HttpApp(asyncio.Protocol):
    def __init__(self, pod: str, namespace: str) -> None:
        self.pod, self.namespace = pod, namespace
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "unknown"

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._reply(response(431, b"headers too large\n", "text/plain", close=True))
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self._reply(response(400, b"bad request line\n", "text/plain", close=True))
                return
            method, target, version = parts
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    self._reply(response(400, b"bad header\n", "text/plain", close=True))
                    return
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._reply(response(411, b"send Content-Length\n", "text/plain", close=True))
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._reply(response(413 if length > 0 else 400, b"bad Content-Length\n",
                                     "text/plain", close=True))
                return
            if len(self.buf) < end + 4 + length:
                return  # wait for the body
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            conn = headers.get("connection", "").lower()
            close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
            self._reply(self._answer(method, target, headers, body, close), close)

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes,
                close: bool) -> bytes:
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if path == "/echo":
            ctype = headers.get("content-type", "application/octet-stream")
            return response(200, body, ctype, close=close, head_only=head_only)
        if path.startswith("/bytes/"):
            size = path.removeprefix("/bytes/")
            if not (size.isascii() and size.isdigit() and int(size) <= MAX_BYTES):
                return response(400, f"size must be 0..{MAX_BYTES}\n".encode(), "text/plain",
                                close=close, head_only=head_only)
            return response(200, _filler(int(size)), "application/octet-stream", close=close,
                            head_only=head_only)
        if path == "/":
            doc = {"pod": self.pod, "namespace": self.namespace, "peer": self.peer}
            return response(200, (json.dumps(doc) + "\n").encode(), "application/json",
                            close=close, head_only=head_only)
        return response(404, b"not found\n", "text/plain", close=close, head_only=head_only)

    def _reply(self, data: bytes, close: bool = True) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()


async def serve(port: int, pod: str, namespace: str, host: str = "0.0.0.0") -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(lambda: HttpApp(pod, namespace), host, port,
                                      reuse_address=True, backlog=1024)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshctl-sampleapp")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--pause", action="store_true", help="no app: sleep until signalled")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")
    if args.pause:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port, args.name, args.namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
