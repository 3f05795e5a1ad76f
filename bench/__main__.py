"""Benchmark harness: the data path between ``client`` (node-1) and ``server-1`` (node-2) of the
default local cluster, once without the mesh (namespace ``default`` unenrolled) and once through it
(enrolled), in one run, on the same pods and the same network. Writes ``bench/RESULTS.md``.

Measured with real tools inside the pods (``meshctl local exec``): single-stream throughput
(iperf3), request latency p50/p99 and requests per second with 1 and 50 connections (wrk, keep-
alive), and new connections per second (wrk with ``Connection: close``: every request is a new TCP
connection, and through the mesh a new HBONE stream). Each figure is the median of ``--repeat``
runs. Nothing here is typed by hand: the table is rendered from the measurements.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESHCTL = [sys.executable, "-m", "meshctl"]
SERVER_POD = "server-1"
CLIENT_POD = "client"
IPERF_PORT = 5201
APP_PORT = 8080
CLUSTER_LOCK = "/run/lock/nodemesh-local-cluster.lock"


def run(argv: list[str], *, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
            f"stderr: {proc.stderr[-2000:]}"
        )
    return proc.stdout


def meshctl(*args: str, timeout: float = 300) -> str:
    return run([*MESHCTL, *args], timeout=timeout)


def pod_exec(pod: str, *argv: str, timeout: float = 120) -> str:
    return meshctl("local", "exec", pod, "--", *argv, timeout=timeout)


def pods() -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(meshctl("local", "pods", "--json"))}


def set_enrollment(enabled: bool) -> None:
    """Enroll or unenroll namespace ``default`` and wait until the node agents agree."""
    labels = "{nodemesh.io/dataplane-mode: enabled}" if enabled else "{}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"
                f"  labels: {labels}\n")
    try:
        meshctl("apply", "-f", f.name)
    finally:
        os.unlink(f.name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = pods()
        wanted = [state[p] for p in (CLIENT_POD, SERVER_POD)]
        if all(p.get("enrolled") is enabled and (
            p.get("redirection") == "redirected" if enabled
            else p.get("redirection") in (None, "removed")) for p in wanted):
            time.sleep(0.5)  # let the ztunnel finish binding after the agent's report
            return
        time.sleep(0.2)
    raise RuntimeError(f"enrollment={enabled} did not take effect within 30 s: {wanted}")


@dataclass
class Figures:
    throughput_gbps: float
    p50_1_us: float
    p99_1_us: float
    rps_1: float
    p50_50_us: float
    p99_50_us: float
    rps_50: float
    new_conns_per_s: float


def iperf(server_ip: str, seconds: int) -> float:
    out = pod_exec(CLIENT_POD, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t",
                   str(seconds), "-J", timeout=seconds + 60)
    data = json.loads(out)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def _dur_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, seconds: int,
        close: bool = False) -> tuple[float, float, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = pod_exec(CLIENT_POD, *argv, timeout=seconds + 60)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    if not (p50 and p99 and rps):
        raise RuntimeError(f"unparsable wrk output:\n{out}")
    if errors:
        print(f"  wrk reported socket errors: {errors.group(1)}", file=sys.stderr)
    return _dur_us(p50.group(1)), _dur_us(p99.group(1)), float(rps.group(1))


def measure(server_ip: str, seconds: int, repeat: int) -> Figures:
    samples: list[Figures] = []
    url = f"http://{server_ip}:{APP_PORT}/"
    for i in range(repeat):
        print(f"  run {i + 1}/{repeat}", file=sys.stderr)
        tput = iperf(server_ip, seconds)
        p50_1, p99_1, rps_1 = wrk(url, 1, seconds)
        p50_50, p99_50, rps_50 = wrk(url, 50, seconds)
        _, _, cps = wrk(url, 1, seconds, close=True)
        samples.append(Figures(tput, p50_1, p99_1, rps_1, p50_50, p99_50, rps_50, cps))
    med = statistics.median
    return Figures(*(med(getattr(s, f) for s in samples) for f in Figures.__dataclass_fields__))


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


def render(direct: Figures, mesh: Figures, args: argparse.Namespace, started: str) -> str:
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).strip()
    lines = [
        "# Benchmark results",
        "",
        "Produced by `python -m bench` (`make bench`); do not edit by hand.",
        "",
        f"- run: {started}, commit `{commit or 'unknown'}`, {os.cpu_count()} cores, "
        f"kernel {platform.release()}",
        f"- path: `{CLIENT_POD}` (node-1) → `{SERVER_POD}` (node-2), pod IP, "
        f"{args.seconds} s per measurement, median of {args.repeat} runs",
        "- direct: namespace `default` unenrolled (no redirection, plain TCP over the same "
        "veths and bridges); mesh: enrolled (client → ztunnel node-1 → HBONE/mTLS → ztunnel "
        "node-2 → server)",
        "- the sample app is a small Python HTTP server: request rates are bounded by it in "
        "both columns",
        "",
        "| measurement | direct | mesh | mesh/direct |",
        "|---|---:|---:|---:|",
    ]
    for title, field, unit, fmt in ROWS:
        d, m = getattr(direct, field), getattr(mesh, field)
        ratio = f"{m / d:.2f}" if d else "n/a"
        lines.append(f"| {title} | {fmt.format(d)} {unit} | {fmt.format(m)} {unit} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args()
    if args.seconds < 1 or args.repeat < 1:
        parser.error("--seconds and --repeat must be at least 1")
    # the cluster's names are fixed: take turns with test runs on this machine
    with open(CLUSTER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> int:
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meshctl("local", "down")
    meshctl("local", "up", timeout=600)
    try:
        server_ip = str(pods()[SERVER_POD]["ip"])
        pod_exec(SERVER_POD, "iperf3", "-s", "-p", str(IPERF_PORT), "-D")
        print("direct (unenrolled):", file=sys.stderr)
        set_enrollment(False)
        direct = measure(server_ip, args.seconds, args.repeat)
        print("mesh (enrolled):", file=sys.stderr)
        set_enrollment(True)
        mesh = measure(server_ip, args.seconds, args.repeat)
    finally:
        if not args.keep:
            meshctl("local", "down")
    table = render(direct, mesh, args, started)
    args.output.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
