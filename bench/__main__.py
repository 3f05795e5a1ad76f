"""Benchmark harness: the data path between ``client`` (node-1) and ``server-1`` (node-2) of the
default local cluster, once without the mesh (namespace ``default`` unenrolled) and once through it
(enrolled) in each redirection mode (iptables, eBPF; eBPF without and with the sockmap acceleration
of the in-pod app <-> ztunnel hop, ``--ebpf-sockmap``), in one run, on the same topology and the
same network. Writes ``bench/RESULTS.md``.

Enrollment latency, per mode: ``--enroll-pods`` extra pods (half per node) are opted out, then
enrolled one at a time by writing the pod's object back; for each, the agent reports how long it
took from starting the pod's redirection (its netns is ready and known) until the redirection is
live and the ztunnel has acked its listeners (``enrollSeconds`` in the agent status), and the
end-to-end time from the object write (controller's directory poll, discovery push included).

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
import math
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
from typing import Any

import yaml

from meshctl.local.layout import Layout, default_state_dir

ROOT = Path(__file__).resolve().parent.parent
MESHCTL = [sys.executable, "-m", "meshctl"]
SERVER_POD = "server-1"
CLIENT_POD = "client"
IPERF_PORT = 5201
APP_PORT = 8080
CLUSTER_LOCK = "/run/lock/nodemesh-local-cluster.lock"
#: the column of the eBPF mode with the agents' --ebpf-sockmap
SOCKMAP = "ebpf+sockmap"


def run(argv: list[str], *, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
            f"stderr: {proc.stderr[-2000:]}"
        )
    return proc.stdout


def meshctl(*args: str, timeout: float = 300, check: bool = True) -> str:
    return run([*MESHCTL, *args], timeout=timeout, check=check)


def pod_exec(pod: str, *argv: str, timeout: float = 120, check: bool = True) -> str:
    return meshctl("local", "exec", pod, "--", *argv, timeout=timeout, check=check)


def pods() -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(meshctl("local", "pods", "--json"))}


def set_enrollment(enabled: bool) -> None:
    """Enroll or unenroll namespace ``default`` and wait until the node agents agree (for every
    pod of the namespace, so no enrollment work overlaps a measurement)."""
    labels = "{nodemesh.io/dataplane-mode: enabled}" if enabled else "{}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"
                f"  labels: {labels}\n")
    try:
        meshctl("apply", "-f", f.name)
    finally:
        os.unlink(f.name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = pods()
        wanted = [p for p in state.values() if p.get("namespace") == "default"]
        if all(p.get("enrolled") is enabled and (
            p.get("redirection") == "redirected" if enabled
            else p.get("redirection") in (None, "removed")) for p in wanted):
            time.sleep(0.5)  # let the ztunnel finish binding after the agent's report
            return
        time.sleep(0.2)
    raise RuntimeError(f"enrollment={enabled} did not take effect within 60 s: {wanted}")


def agent_pods() -> dict[str, dict[str, Any]]:
    """Every pod the node agents report, by name (from their status files)."""
    out: dict[str, dict[str, Any]] = {}
    for f in Layout(default_state_dir()).nodes_dir.glob("*/agent-status.json"):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being replaced: the next read sees it
        for p in doc.get("pods", []):
            out[str(p.get("name"))] = p
    return out


def _write(path: Path, doc: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # not *.yaml: the controller ignores it
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def _opted_out(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(doc))
    out["metadata"].setdefault("labels", {})["nodemesh.io/dataplane-mode"] = "none"
    return out


@dataclass
class Enrollment:
    agent_s: list[float]
    end_to_end_s: list[float]


def enrollment_latency() -> Enrollment:
    """Opt the extra ``app-*`` pods out, then enroll them one by one (see the module doc)."""
    config = Layout(default_state_dir()).config_dir
    files: dict[str, tuple[Path, dict[str, Any]]] = {}
    for f in sorted(config.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Pod" \
                and str(doc["metadata"]["name"]).startswith("app-"):
            files[str(doc["metadata"]["name"])] = (f, doc)
    if not files:
        raise RuntimeError("no app-* pods: start the cluster with --pods-per-node")
    for f, doc in files.values():
        _write(f, _opted_out(doc))
    _wait("the app pods to be opted out", lambda: all(
        agent_pods().get(n, {}).get("status") in (None, "removed") for n in files), 120)
    result = Enrollment([], [])
    for name, (f, doc) in files.items():
        started = time.time()
        _write(f, doc)
        st = _wait(f"{name} to be redirected", lambda n=name, t=started: _redirected(n, t), 30)
        result.agent_s.append(float(st["enrollSeconds"]))
        result.end_to_end_s.append(float(st["since"]) - started)
    return result


def _redirected(name: str, after: float) -> dict[str, Any] | None:
    st = agent_pods().get(name)
    if st and st.get("status") == "redirected" and st.get("ztunnel") \
            and float(st.get("since", 0)) >= after and st.get("enrollSeconds") is not None:
        return st
    return None


def _wait(what: str, fn: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.005)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


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
    """Gbit/s, or NaN (with iperf3's error on stderr) when the transfer failed: a failure is a
    result to report, not a reason to lose the other figures."""
    out = pod_exec(CLIENT_POD, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t",
                   str(seconds), "-J", timeout=seconds + 60, check=False)
    data: Any = None
    try:
        data = json.loads(out)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError, TypeError):
        error = data.get("error") if isinstance(data, dict) else None
        print(f"  iperf3 failed: {error or out[-300:]}", file=sys.stderr)
        return math.nan


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
    def med(values: list[float]) -> float:
        ok = [v for v in values if not math.isnan(v)]
        return statistics.median(ok) if len(ok) == len(values) else math.nan

    return Figures(*(med([getattr(s, f) for s in samples]) for f in Figures.__dataclass_fields__))


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


def render(direct: Figures, mesh: dict[str, Figures], enroll: dict[str, Enrollment],
           args: argparse.Namespace, started: str) -> str:
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).strip()
    modes = list(mesh)
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
        "node-2 → server), with the node agents in each redirection mode (`--redirect-mode`); "
        f"`{SOCKMAP}`: eBPF mode with `--ebpf-sockmap` (the in-pod hop between an app and its "
        "ztunnel, both ends on one sockhash, carried by sk_msg instead of TCP/IP)",
        "- both pods run with `net.ipv4.tcp_tw_reuse=1` and ports 1024-65000 (load-test "
        "tuning, so new-connection rates are not capped by TIME_WAIT), 15000-15100 reserved "
        "for the mesh",
        "- the sample app is a one-process asyncio (uvloop) HTTP server: in the direct column "
        "request rates are bounded by it",
        "- `failed`: at least one run of that measurement failed (its error is in the run's "
        "output); no median is given from the others",
        "",
        "| measurement | direct | " + " | ".join(f"mesh ({m})" for m in modes) + " | "
        + " | ".join(f"{m}/direct" for m in modes) + " |",
        "|---|---:|" + "---:|" * (2 * len(modes)),
    ]
    def cell(value: float, fmt: str, unit: str) -> str:
        return "failed" if math.isnan(value) else f"{fmt.format(value)} {unit}"

    for title, field, unit, fmt in ROWS:
        d = getattr(direct, field)
        cells = [cell(getattr(mesh[m], field), fmt, unit) for m in modes]
        ratios = [f"{getattr(mesh[m], field) / d:.2f}"
                  if d and not math.isnan(getattr(mesh[m], field)) else "n/a" for m in modes]
        lines.append(f"| {title} | {fmt.format(d)} {unit} | " + " | ".join(cells) + " | "
                     + " | ".join(ratios) + " |")
    if enroll:
        n = len(next(iter(enroll.values())).agent_s)
        lines += [
            "",
            f"## Enrollment latency ({n} pods, enrolled one at a time, per mode)",
            "",
            "- agent: from the start of the pod's redirection (netns ready and known to the "
            "agent) to redirection live and the ztunnel's ack that the pod's listeners are bound",
            "- end to end: from writing the pod's object (enrolled) into the config directory "
            "(the controller polls it every 0.25 s) to the same point",
            "",
            "| mode | agent p50 | agent p99 | end to end p50 | end to end p99 |",
            "|---|---:|---:|---:|---:|",
        ]
        for m, e in enroll.items():
            ms = [percentile(v, q) * 1000 for v in (e.agent_s, e.end_to_end_s) for q in (50, 99)]
            lines.append(f"| {m} | " + " | ".join(f"{x:.1f} ms" for x in ms) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    parser.add_argument("--redirect-mode", choices=["both", "iptables", "ebpf"], default="both",
                        help="the node agents' redirection mode(s) to measure (default both)")
    parser.add_argument("--ebpf-sockmap", choices=["off", "on", "both"], default="both",
                        help="eBPF mode without and/or with the agents' --ebpf-sockmap (the in-pod "
                             "app <-> ztunnel hop on sockmap/sk_msg); both: one column each "
                             "(default)")
    parser.add_argument("--enroll-pods", type=int, default=100,
                        help="pods whose enrollment latency is measured, per mode (even; 0: skip)")
    args = parser.parse_args()
    if args.seconds < 1 or args.repeat < 1:
        parser.error("--seconds and --repeat must be at least 1")
    if args.enroll_pods < 0 or args.enroll_pods % 2:
        parser.error("--enroll-pods must be an even number >= 0 (half per node)")
    # the cluster's names are fixed: take turns with test runs on this machine
    with open(CLUSTER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> int:
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    modes = ["iptables", "ebpf"] if args.redirect_mode == "both" else [args.redirect_mode]
    if "ebpf" in modes:
        sockmap = {"off": ["ebpf"], "on": [SOCKMAP], "both": ["ebpf", SOCKMAP]}[args.ebpf_sockmap]
        modes = [m for m in modes if m != "ebpf"] + sockmap
    direct: Figures | None = None
    mesh: dict[str, Figures] = {}
    enroll: dict[str, Enrollment] = {}
    for i, column in enumerate(modes):
        mode = "ebpf" if column == SOCKMAP else column
        meshctl("local", "down")
        meshctl("local", "up", "--redirect-mode", mode,
                *(["--ebpf-sockmap"] if column == SOCKMAP else []),
                "--pods-per-node", str(args.enroll_pods // 2), timeout=900)
        try:
            state = pods()
            wrong = {n: p.get("mode") for n, p in state.items()
                     if p.get("enrolled") and p.get("mode") != mode}
            if wrong:
                raise RuntimeError(f"pods not in {mode} mode (did auto fall back?): {wrong}")
            server_ip = str(state[SERVER_POD]["ip"])
            for pod in (CLIENT_POD, SERVER_POD):
                # a load generator's usual tuning, in both pods' netns and for every column:
                # thousands of short connections per second must not run out of ports to
                # TIME_WAIT (the default range, 28k ports for 60 s, caps near 470 per second).
                # The mesh's in-pod ports stay out of it, as in any mesh: an app's connection
                # from local port 15006 (even in TIME_WAIT) keeps the ztunnel from listening
                # there when the pod is enrolled again
                pod_exec(pod, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
                         "net.ipv4.ip_local_port_range=1024 65000",
                         "net.ipv4.ip_local_reserved_ports=15000-15100")
            pod_exec(SERVER_POD, "iperf3", "-s", "-p", str(IPERF_PORT), "-D")
            if direct is None:
                print("direct (unenrolled):", file=sys.stderr)
                set_enrollment(False)
                direct = measure(server_ip, args.seconds, args.repeat)
                set_enrollment(True)
            print(f"mesh ({column}):", file=sys.stderr)
            mesh[column] = measure(server_ip, args.seconds, args.repeat)
            if args.enroll_pods:
                print(f"enrollment latency ({column}, {args.enroll_pods} pods):",
                      file=sys.stderr)
                enroll[column] = enrollment_latency()
        finally:
            if not (args.keep and i == len(modes) - 1):
                meshctl("local", "down")
    assert direct is not None
    table = render(direct, mesh, enroll, args, started)
    args.output.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
