"""The local cluster's workload: a small threaded HTTP/1.1 app (keep-alive), or a pause process.

``python -m meshctl.sampleapp --port 8080 --name server-1 --namespace default``
  ``GET /``     -> ``{"pod": ..., "namespace": ..., "peer": "ip:port"}``
  ``/echo``     -> the request body back (any method)
``python -m meshctl.sampleapp --pause`` sleeps until signalled (pods without an app).

This is the workload, not the mesh: threads are fine here.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

MAX_BODY: Final = 16 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def __init__(self, pod: str, namespace: str, *args: object) -> None:
        self.pod = pod
        self.namespace = namespace
        super().__init__(*args)  # type: ignore[arg-type]

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(400, b"bad Content-Length\n", "text/plain")
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        if path == "/echo":
            ctype = self.headers.get("Content-Type") or "application/octet-stream"
            self._send(200, body, ctype)
        elif path == "/":
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            doc = {"pod": self.pod, "namespace": self.namespace, "peer": peer}
            self._send(200, (json.dumps(doc) + "\n").encode(), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_HEAD = _handle

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(port: int, pod: str, namespace: str, host: str = "0.0.0.0") -> None:
    server = ThreadingHTTPServer((host, port), partial(Handler, pod, namespace))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshctl-sampleapp")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--pause", action="store_true", help="no app: sleep until signalled")
    args = parser.parse_args(argv)
    if args.pause:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    serve(args.port, args.name, args.namespace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
