"""Run inside a pod: hold ONE TCP connection to HOST:PORT and send an HTTP/1.1 keep-alive request
every INTERVAL seconds for DURATION seconds (or until the file STOP exists). Prints one JSON line:
{"requests": n, "error": null | "...", "local_port": p}. Exit 0 only if every request succeeded.
Prints "ready" first, once the first request succeeded."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def read_response(sock: socket.socket, buf: bytearray) -> None:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    if b" 200 " not in status + b" ":
        raise ConnectionError(f"unexpected status line {status!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        body += chunk
    buf[:] = body[length:]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--stop-file", default="")
    args = p.parse_args()
    count, error = 0, None
    sock = socket.create_connection((args.host, args.port), timeout=5)
    local_port = sock.getsockname()[1]
    buf = bytearray()
    deadline = time.monotonic() + args.duration
    try:
        while time.monotonic() < deadline:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode())
            read_response(sock, buf)
            count += 1
            if count == 1:
                print("ready", flush=True)
            time.sleep(args.interval)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc} after {count} requests"
    print(json.dumps({"requests": count, "error": error, "local_port": local_port}), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
