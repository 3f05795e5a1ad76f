"""Run inside a pod: send hostile HTTP/1.1 inputs to HOST:PORT, each on its own connection, and
print one JSON line per input: {"name", "answer", "seconds"} where ``answer`` is the first line
the other side sent back, "closed" (closed without an answer) or "timeout" (nothing within the
read timeout, connection still open).

``--slowloris N``: instead, open N connections that each send an unfinished request head, one
header line every second, and print {"name": "slowloris", "open": …, "closed_by_peer": …} after
``--hold`` seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

#: inputs that once broke, or could break, a proxy's HTTP/1.1 parser (request smuggling,
#: parser loops, unbounded buffers); each must get an error answer or a close, quickly
CHUNKED = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
HOSTILE: dict[str, bytes] = {
    "negative_chunk_size": CHUNKED + b"-6\r\nX",
    "signed_chunk_size": CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n",
    "hex_prefix_chunk_size": CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",
    "huge_chunk_size": CHUNKED + b"f" * 64 + b"\r\nX",
    "bare_lf_head": b"GET / HTTP/1.1\nHost: h\n\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
    "bare_lf_end_of_head": b"GET / HTTP/1.1\r\nHost: h\r\n\nGET /smuggled HTTP/1.1\r\n"
    b"Host: h\r\n\r\n",
    "non_ascii_content_length": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ١٢\r\n\r\n"
    .encode() + b"x" * 12,
    "superscript_content_length": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ²\r\n\r\nxx"
    .encode(),
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\n",
    "te_not_chunked_last": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity"
    b"\r\n\r\n0\r\n\r\n",
    "conflicting_content_length": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nxx",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "huge_head": b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"a" * 200_000 + b"\r\n\r\n",
    "many_headers": b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: a\r\n" * 5000 + b"\r\n",
    "huge_chunk_extension": CHUNKED + b"5;" + b"e" * 100_000 + b"\r\nhello\r\n0\r\n\r\n",
    "endless_trailers": CHUNKED + b"0\r\n" + b"X-T: t\r\n" * 20_000 + b"\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "garbage": bytes(range(256)) * 64,
}


def send_one(host: str, port: int, payload: bytes, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except OSError:
            pass  # the server may close before reading it all: then read what it said
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            return ("timeout" if not buf else buf.split(b"\n")[0].decode("latin-1").strip(),
                    time.monotonic() - started)
        except ConnectionResetError:
            pass
    first = buf.split(b"\n")[0].decode("latin-1").strip()
    return (first or "closed"), time.monotonic() - started


def slowloris(host: str, port: int, conns: int, hold: float) -> dict[str, object]:
    socks: list[socket.socket] = []
    for _ in range(conns):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")
        s.setblocking(False)
        socks.append(s)
    closed: set[int] = set()
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline and len(closed) < len(socks):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                s.send(b"X-Slow: 1\r\n")
                if s.recv(4096) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(1.0)
    for s in socks:
        s.close()
    return {"name": "slowloris", "open": conns, "closed_by_peer": len(closed)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--slowloris", type=int, default=0)
    p.add_argument("--hold", type=float, default=10.0)
    args = p.parse_args()
    if args.slowloris:
        print(json.dumps(slowloris(args.host, args.port, args.slowloris, args.hold)), flush=True)
        return
    for name, payload in HOSTILE.items():
        try:
            answer, seconds = send_one(args.host, args.port, payload, args.timeout)
        except OSError as exc:
            answer, seconds = f"error: {exc}", 0.0
        print(json.dumps({"name": name, "answer": answer, "seconds": round(seconds, 3)}),
              flush=True)


if __name__ == "__main__":
    main()
