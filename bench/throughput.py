"""The closed-loop figures of one column (direct, a mesh mode, the sidecars): single-stream
throughput (iperf3), request latency and rate with 1 and 50 keep-alive connections (wrk), and
new connections per second (wrk with ``Connection: close``), all from ``client`` to
``server-1``'s pod IP, each the median of ``repeat`` runs (``nan`` when any run failed).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, fields
from typing import Any

from bench.common import APP_PORT, CLIENT_POD, IPERF_PORT, median_or_nan, pod_exec


@dataclass(frozen=True)
class Figures:
    throughput_gbps: float
    p50_1_us: float
    p99_1_us: float
    rps_1: float
    p50_50_us: float
    p99_50_us: float
    rps_50: float
    new_conns_per_s: float

    @classmethod
    def failed(cls) -> Figures:
        return cls(*(math.nan for _ in fields(cls)))

    @classmethod
    def median(cls, samples: list[Figures]) -> Figures:
        return cls(*(median_or_nan(getattr(s, f.name) for s in samples) for f in fields(cls)))


#: (title, field, unit, format) of each row of the main table
ROWS = [
    ("single-stream throughput (iperf3)", "throughput_gbps", "Gbit/s", "{:.2f}"),
    ("latency p50, 1 connection (wrk)", "p50_1_us", "µs", "{:.0f}"),
    ("latency p99, 1 connection (wrk)", "p99_1_us", "µs", "{:.0f}"),
    ("requests/s, 1 connection (wrk)", "rps_1", "req/s", "{:.0f}"),
    ("latency p50, 50 connections (wrk)", "p50_50_us", "µs", "{:.0f}"),
    ("latency p99, 50 connections (wrk)", "p99_50_us", "µs", "{:.0f}"),
    ("requests/s, 50 connections (wrk)", "rps_50", "req/s", "{:.0f}"),
    ("new connections/s (wrk, Connection: close)", "new_conns_per_s", "conn/s", "{:.0f}"),
]

_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def dur_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class WrkResult:
    p50_us: float
    p99_us: float
    rps: float
    requests: int


def parse_wrk(out: str) -> WrkResult:
    """wrk's ``--latency`` report; raises ValueError when it is not one (or had errors)."""
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ", out, re.M)
    if not (p50 and p99 and rps and total):
        raise ValueError(f"unparsable wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise ValueError(f"wrk got {non2xx.group(1)} non-2xx responses:\n{out}")
    return WrkResult(dur_us(p50.group(1)), dur_us(p99.group(1)), float(rps.group(1)),
                     int(total.group(1)))


def iperf(server_ip: str, seconds: int, port: int = IPERF_PORT) -> float:
    """Gbit/s, or NaN (with iperf3's error on stderr) when the transfer failed: a failure is a
    result to report, not a reason to lose the other figures."""
    out = pod_exec(CLIENT_POD, "iperf3", "-c", server_ip, "-p", str(port), "-t",
                   str(seconds), "-J", timeout=seconds + 60, check=False)
    data: Any = None
    try:
        data = json.loads(out)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError, TypeError):
        error = data.get("error") if isinstance(data, dict) else None
        print(f"  iperf3 failed: {error or out[-300:]}", file=sys.stderr)
        return math.nan


def wrk(url: str, connections: int, seconds: int, close: bool = False) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = pod_exec(CLIENT_POD, *argv, timeout=seconds + 60)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    if errors:
        print(f"  wrk reported socket errors: {errors.group(1)}", file=sys.stderr)
    return parse_wrk(out)


def _wrk_or_nan(url: str, connections: int, seconds: int, close: bool = False) -> WrkResult:
    try:
        return wrk(url, connections, seconds, close)
    except (RuntimeError, ValueError) as exc:
        print(f"  wrk failed: {exc}", file=sys.stderr)
        return WrkResult(math.nan, math.nan, math.nan, 0)


def measure(server_ip: str, seconds: int, repeat: int) -> Figures:
    samples: list[Figures] = []
    url = f"http://{server_ip}:{APP_PORT}/"
    for i in range(repeat):
        print(f"  run {i + 1}/{repeat}", file=sys.stderr)
        tput = iperf(server_ip, seconds)
        one = _wrk_or_nan(url, 1, seconds)
        fifty = _wrk_or_nan(url, 50, seconds)
        new = _wrk_or_nan(url, 1, seconds, close=True)
        samples.append(Figures(tput, one.p50_us, one.p99_us, one.rps, fifty.p50_us,
                               fifty.p99_us, fifty.rps, new.rps))
    return Figures.median(samples)
