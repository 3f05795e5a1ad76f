"""``python -m bench.constant_rate URL --rate R --seconds S``: an open-loop HTTP/1.1 load
generator (wrk2-style; Debian and PyPI have no constant-rate tool to install).

Request ``i`` is due at ``start + i / rate`` whatever happened before; it is sent at once on an
idle keep-alive connection, or waits in a FIFO for the next connection to free up. Its latency is
measured from that *intended* send time to the last byte of its response, so a stall shows up in
every request that should have been sent during it (coordinated omission cannot hide it, as it
does in closed-loop tools whose late requests are simply not sent).

One thread, non-blocking sockets and ``epoll``; the schedule is kept by a ``timerfd`` (through
ctypes: Python 3.11 has no ``os.timerfd_*``) with nanosecond expiry, because epoll's and asyncio's
millisecond timeouts would add up to a millisecond to every latency. The first ``--warmup``
seconds are sent but not counted. Prints one JSON object (see :class:`Summary`).

The schedule, the response framing and the summary are pure and unit tested.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import errno
import json
import math
import os
import select
import socket
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


# --- pure parts -------------------------------------------------------------------------------


def intended_ns(start_ns: int, index: int, rate: float) -> int:
    """When request ``index`` is due (monotonic ns)."""
    return start_ns + round(index * 1e9 / rate)


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1) of an already sorted list; ``nan`` when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class ResponseFramer:
    """Counts complete HTTP/1.1 responses in a byte stream (``Content-Length`` framing only:
    the sample app never sends chunked). ``feed`` returns how many responses completed."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need: int | None = None  # body bytes still missing, None while reading a head
        self.statuses: list[int] = []

    def feed(self, data: bytes) -> int:
        self.buf += data
        done = 0
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 65536:
                        raise ValueError("response head over 64 KiB")
                    return done
                head = bytes(self.buf[:end]).decode("latin-1")
                del self.buf[: end + 4]
                lines = head.split("\r\n")
                parts = lines[0].split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/1.") \
                        or not parts[1].isdigit():
                    raise ValueError(f"bad status line {lines[0]!r}")
                self.statuses.append(int(parts[1]))
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                self.need = length
            if len(self.buf) < self.need:
                return done
            del self.buf[: self.need]
            self.need = None
            done += 1


@dataclass(frozen=True)
class Summary:
    rate: float
    seconds: float
    connections: int
    sent: int
    counted: int
    errors: int
    non_2xx: int
    achieved_rate: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float


def summarize(latencies_ns: list[int], *, rate: float, seconds: float, connections: int,
              sent: int, errors: int, non_2xx: int, elapsed_s: float) -> Summary:
    lat = sorted(v / 1000 for v in latencies_ns)
    return Summary(rate, seconds, connections, sent, len(lat), errors, non_2xx,
                   sent / elapsed_s if elapsed_s > 0 else math.nan,
                   quantile(lat, 0.5), quantile(lat, 0.9), quantile(lat, 0.99),
                   quantile(lat, 0.999), lat[-1] if lat else math.nan)


# --- the load generator -----------------------------------------------------------------------


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    def __init__(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self.libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")

    def at(self, when_ns: int) -> None:
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(max(when_ns, 1) // 10**9,
                                                      max(when_ns, 1) % 10**9))
        if self.libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.framer = ResponseFramer()
        self.inflight: collections.deque[int] = collections.deque()  # intended times


def run_load(url: str, rate: float, seconds: float, connections: int,
             warmup: float) -> Summary:
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    request = (f"GET {parsed.path or '/'} HTTP/1.1\r\nHost: {parsed.netloc}\r\n\r\n").encode()
    conns = [Conn(host, port) for _ in range(connections)]
    by_fd = {c.sock.fileno(): c for c in conns}
    idle = collections.deque(conns)
    waiting: collections.deque[int] = collections.deque()
    timer = TimerFd()
    ep = select.epoll()
    ep.register(timer.fd, select.EPOLLIN)
    for c in conns:
        ep.register(c.sock.fileno(), select.EPOLLIN)
    total = round((warmup + seconds) * rate)
    counted_from = time.monotonic_ns() + round(warmup * 1e9)
    start = time.monotonic_ns() + 10_000_000
    latencies: list[int] = []
    errors = non_2xx = sent = completed = 0
    next_index = 0
    timer.at(intended_ns(start, 0, rate))

    def send(c: Conn, due: int) -> None:
        nonlocal sent, errors
        try:
            c.sock.send(request)  # a small request fits the empty send buffer of an idle conn
        except OSError:
            errors += 1
            return
        c.inflight.append(due)
        sent += 1

    deadline = intended_ns(start, total, rate) + 10 * 10**9
    while completed + errors < total and time.monotonic_ns() < deadline:
        for fd, _ in ep.poll(1.0):
            if fd == timer.fd:
                timer.clear()
                now = time.monotonic_ns()
                while next_index < total and intended_ns(start, next_index, rate) <= now:
                    waiting.append(intended_ns(start, next_index, rate))
                    next_index += 1
                if next_index < total:
                    timer.at(intended_ns(start, next_index, rate))
            else:
                c = by_fd[fd]
                try:
                    data = c.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.EAGAIN:
                        raise
                    continue
                if not data:
                    raise RuntimeError("the server closed a keep-alive connection")
                finished = c.framer.feed(data)
                now = time.monotonic_ns()
                for _ in range(finished):
                    due = c.inflight.popleft()
                    completed += 1
                    if due >= counted_from:
                        latencies.append(now - due)
                    if c.framer.statuses.pop(0) // 100 != 2:
                        non_2xx += 1
                if finished and not c.inflight:
                    idle.append(c)
        while waiting and idle:
            send(idle.popleft(), waiting.popleft())
    elapsed = (time.monotonic_ns() - start) / 1e9
    for c in conns:
        c.sock.close()
    timer.close()
    ep.close()
    lost = total - completed - errors
    return summarize(latencies, rate=rate, seconds=seconds, connections=connections, sent=sent,
                     errors=errors + lost, non_2xx=non_2xx, elapsed_s=elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.constant_rate", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5, help="counted duration")
    parser.add_argument("--warmup", type=float, default=1, help="sent, not counted")
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.connections < 1:
        parser.error("--rate, --seconds and --connections must be positive")
    print(json.dumps(asdict(run_load(args.url, args.rate, args.seconds, args.connections,
                                     args.warmup))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
