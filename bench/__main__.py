"""Benchmark harness (``make bench``): the data path between ``client`` (node-1) and
``server-1`` (node-2) of the local cluster without the mesh (direct), through a pair of HAProxy
sidecars (what a user would pick instead), and through the mesh in each redirection mode, in one
run, on the same topology and network; then the mesh's memory against one sidecar per pod,
memory per connection, enrollment latency and policy propagation. Writes ``bench/RESULTS.md``
and the plots beside it.

One cluster per redirection mode (``--redirect-mode``, default both; ``ebpf+sockmap`` only with
``--ebpf-sockmap on|both``). The first holds the direct and sidecar columns and the policy
propagation; the eBPF one (or the last) has ``memory.STEPS[-1]`` app pods per node for the
memory figures. Per column: :mod:`bench.throughput` (iperf3, wrk), :mod:`bench.cpu` (CPU per
1000 requests of the proxies) and :mod:`bench.constant_rate` (latency at a fixed rate). Each
figure is the median of ``--repeat`` runs; a failed one is ``failed`` (its error printed), never
a made-up value. Nothing is typed by hand: the tables and plots are rendered from the run.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import memory, plots
from bench.common import (
    APP_PORT,
    CLIENT_POD,
    CLUSTER_LOCK,
    IPERF_PORT,
    NODES,
    ROOT,
    SERVER_POD,
    attempt,
    median_or_nan,
    mesh_processes,
    meshctl,
    pod_exec,
    pods,
    run,
    set_enrollment,
    topology_pods,
)
from bench.constant_rate import Summary
from bench.control import enrollment_latency, policy_propagation
from bench.cpu import Cpu, measure_cpu
from bench.render import DIRECT, SIDECARS, SOCKMAP, FixedRate, Results, render
from bench.sidecar import Sidecars
from bench.throughput import measure, wrk

ONE_KIB = "/bytes/1024"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="leave the last cluster up")
    parser.add_argument("--redirect-mode", choices=["both", "iptables", "ebpf"], default="both",
                        help="the node agents' redirection mode(s) to measure (default both)")
    parser.add_argument("--ebpf-sockmap", choices=["off", "on", "both"], default="off",
                        help="eBPF mode without and/or with the agents' --ebpf-sockmap; "
                             "off (default): no ebpf+sockmap column, to save time")
    parser.add_argument("--enroll-pods", type=int, default=100,
                        help="pods whose enrollment latency is measured, per mode (even; 0: skip)")
    parser.add_argument("--rate", type=float, default=1000,
                        help="requests/s of the fixed-rate (open-loop) latency run")
    parser.add_argument("--rate-connections", type=int, default=10)
    parser.add_argument("--policy-samples", type=int, default=20,
                        help="policies applied one at a time for propagation (0: skip)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the memory figures (and the 200-pod cluster they need)")
    args = parser.parse_args()
    if args.seconds < 1 or args.repeat < 1:
        parser.error("--seconds and --repeat must be at least 1")
    if args.enroll_pods < 0 or args.enroll_pods % 2:
        parser.error("--enroll-pods must be an even number >= 0 (half per node)")
    # the cluster's names are fixed: take turns with test runs on this machine
    with open(CLUSTER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run_benchmark(args)


def columns(args: argparse.Namespace) -> list[str]:
    modes = ["iptables", "ebpf"] if args.redirect_mode == "both" else [args.redirect_mode]
    if "ebpf" in modes:
        sockmap = {"off": ["ebpf"], "on": [SOCKMAP], "both": ["ebpf", SOCKMAP]}[args.ebpf_sockmap]
        modes = [m for m in modes if m != "ebpf"] + sockmap
    return modes


def workers_column() -> None:
    """The place for ``mesh (ebpf, --workers N)`` (render.WORKERS_COLUMN): the ztunnel has no
    ``--workers`` option yet, so nothing is measured and RESULTS.md says so. When it exists:
    start a cluster whose ztunnels run N workers, measure it with :func:`measure_column` like
    the other mesh columns, with every worker's pid in the CPU and memory figures."""
    return None


def prepare_pods(server_ip: str) -> None:
    for pod in (CLIENT_POD, SERVER_POD):
        # a load generator's usual tuning, in both pods' netns and for every column:
        # thousands of short connections per second must not run out of ports to
        # TIME_WAIT (the default range, 28k ports for 60 s, caps near 470 per second).
        # The proxies' in-pod ports stay out of it: an app's connection from local port
        # 15006 (even in TIME_WAIT) keeps the ztunnel from listening there, and the sidecars
        # listen on 15041-15052
        pod_exec(pod, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
                 "net.ipv4.ip_local_port_range=1024 65000",
                 "net.ipv4.ip_local_reserved_ports=15000-15100")
    pod_exec(SERVER_POD, "iperf3", "-s", "-p", str(IPERF_PORT), "-D")


def fixed_rate(server_ip: str, args: argparse.Namespace) -> Summary:
    out = pod_exec(CLIENT_POD, "env", f"PYTHONPATH={ROOT}", sys.executable, "-m",
                   "bench.constant_rate", f"http://{server_ip}:{APP_PORT}{ONE_KIB}",
                   "--rate", str(args.rate), "--seconds", str(args.seconds),
                   "--connections", str(args.rate_connections),
                   timeout=args.seconds + 120)
    summary = Summary(**json.loads(out.strip().splitlines()[-1]))
    if summary.errors or summary.non_2xx:
        raise RuntimeError(f"constant-rate run had {summary.errors} errors, "
                           f"{summary.non_2xx} non-2xx responses")
    return summary


def measure_column(name: str, server_ip: str, args: argparse.Namespace,
                   proxies: Callable[[], list[int]] | None, results: Results) -> None:
    """Every per-column figure; ``proxies`` gives the pids whose CPU is counted (None: direct)."""
    print(f"{name}:", file=sys.stderr)
    results.figures[name] = measure(server_ip, args.seconds, args.repeat)
    url = f"http://{server_ip}:{APP_PORT}{ONE_KIB}"
    cpu_wrk: list[float] = []
    cpu_fixed: list[float] = []
    fixed: list[FixedRate] = []
    for i in range(args.repeat):
        print(f"  CPU and fixed rate, run {i + 1}/{args.repeat}", file=sys.stderr)
        w, f, rate = cpu_and_fixed_rate(url, server_ip, args, proxies)
        cpu_wrk.append(w)
        cpu_fixed.append(f)
        fixed.append(rate)
    results.fixed[name] = FixedRate(*(median_or_nan(getattr(f, a) for f in fixed)
                                      for a in ("p50_us", "p99_us", "p999_us")))
    if proxies is not None:
        results.cpu[name] = Cpu(median_or_nan(cpu_wrk), median_or_nan(cpu_fixed))


def cpu_and_fixed_rate(url: str, server_ip: str, args: argparse.Namespace,
                       proxies: Callable[[], list[int]] | None) -> tuple[float, float, FixedRate]:
    """One run: the proxies' CPU per 1000 requests under wrk and at the fixed rate, and the
    fixed-rate latencies (``nan`` for what failed)."""
    failed = FixedRate(math.nan, math.nan, math.nan)
    box: list[Summary] = []

    def load() -> int:
        box.append(fixed_rate(server_ip, args))
        return box[-1].counted

    if proxies is None:
        attempt("fixed rate", load, 0)
        cpu_w = cpu_f = math.nan
    else:
        pids = proxies()
        cpu_w = attempt("CPU under wrk", lambda: measure_cpu(
            pids, lambda: wrk(url, 50, args.seconds).requests), math.nan)
        cpu_f = attempt("CPU at a fixed rate", lambda: measure_cpu(pids, load), math.nan)
    s = box[-1] if box else None
    return cpu_w, cpu_f, FixedRate(s.p50_us, s.p99_us, s.p999_us) if s else failed


def ztunnel_pids() -> list[int]:
    return [p.pid for n in NODES for p in mesh_processes(n, kinds=("ztunnel",))]


def sidecar_column(server_ip: str, args: argparse.Namespace, results: Results) -> None:
    set_enrollment(False)
    topo = topology_pods()
    with Sidecars() as sc:
        spod, scg = topo[SERVER_POD]
        cpod, ccg = topo[CLIENT_POD]
        sc.start_server(SERVER_POD, server_ip, spod.netns_path, scg)
        sc.start_client(CLIENT_POD, server_ip, cpod.netns_path, ccg)

        def pids() -> list[int]:
            found = sc.pids()
            if set(found) != {SERVER_POD, CLIENT_POD}:
                raise RuntimeError(f"a sidecar is gone: running {found}")
            return list(found.values())
        measure_column(SIDECARS, server_ip, args, pids, results)
    set_enrollment(True)


def run_benchmark(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).strip()
    results = Results(started=started, minutes=0, commit=commit, cores=os.cpu_count() or 0,
                      kernel=platform.release(), seconds=args.seconds, repeat=args.repeat,
                      rate=args.rate, rate_connections=args.rate_connections)
    modes = columns(args)
    memory_on = "ebpf" if "ebpf" in modes else modes[-1]
    for i, column in enumerate(modes):
        mode = "ebpf" if column == SOCKMAP else column
        with_memory = not args.no_memory and column == memory_on
        per_node = max(args.enroll_pods // 2, memory.STEPS[-1] if with_memory else 0)
        meshctl("local", "down")
        print(f"cluster: {mode}, {per_node} app pods per node", file=sys.stderr)
        meshctl("local", "up", "--redirect-mode", mode,
                *(["--ebpf-sockmap"] if column == SOCKMAP else []),
                "--pods-per-node", str(per_node), "--timeout", "600", timeout=900)
        try:
            state = pods()
            wrong = {n: p.get("mode") for n, p in state.items()
                     if p.get("enrolled") and p.get("mode") != mode}
            if wrong:
                raise RuntimeError(f"pods not in {mode} mode (did auto fall back?): {wrong}")
            server_ip = str(state[SERVER_POD]["ip"])
            prepare_pods(server_ip)
            if i == 0:
                set_enrollment(False)
                measure_column(DIRECT, server_ip, args, None, results)
                set_enrollment(True)
                attempt("sidecar column", functools.partial(
                    sidecar_column, server_ip, args, results), None)
            measure_column(column, server_ip, args, ztunnel_pids, results)
            if i == 0 and args.policy_samples:
                print(f"policy propagation ({args.policy_samples} policies):", file=sys.stderr)
                prop = attempt("policy propagation",
                               lambda: policy_propagation(args.policy_samples), None)
                if prop:
                    results.propagation = prop
            if args.enroll_pods:
                print(f"enrollment latency ({column}, {args.enroll_pods} pods):",
                      file=sys.stderr)
                e = attempt("enrollment latency", lambda: enrollment_latency(args.enroll_pods),
                            None)
                if e:
                    results.enroll[column] = e
                    results.enroll_pods[column] = len(state)
            if with_memory:
                memory_figures(server_ip, column, results)
            workers_column()
        finally:
            if not (args.keep and i == len(modes) - 1):
                meshctl("local", "down")
    results.minutes = (time.monotonic() - t0) / 60
    results.plots = plots.write_plots(results, args.output.parent)
    text = render(results)
    args.output.write_text(text)
    print(text)
    return 0


def memory_figures(server_ip: str, column: str, results: Results) -> None:
    results.memory_mode = column
    print("memory per connection:", file=sys.stderr)
    results.per_conn = attempt("memory per connection",
                               lambda: memory.per_connection(server_ip), None)
    mesh: list[tuple[int, memory.Mem, memory.Mem]] = []
    side: list[tuple[int, memory.Mem, memory.Mem]] = []
    print("memory against pods, mesh:", file=sys.stderr)
    attempt("mesh memory scan", lambda: memory.mesh_scan(server_ip, mesh), None)
    print("memory against pods, sidecars:", file=sys.stderr)
    attempt("sidecar memory scan", lambda: memory.sidecar_scan(server_ip, side), None)
    results.memory = memory.merge_scans(mesh, side)


if __name__ == "__main__":
    raise SystemExit(main())
