"""Benchmark: the controller's translation (controller/translate.py) at cluster sizes.

Every change the controller sees (a pod starting, a label edited) re-translates the whole
cluster, off the event loop but under the GIL, so its cost bounds how fast the controller
follows a busy cluster. For each size, a synthetic cluster (pods spread over namespaces, nodes
and service accounts; one selector Service per ten pods; one AuthorizationPolicy per namespace)
is translated ``--runs`` times, and the same objects are parsed one by one (``parse_object``:
the per-object validation any translation must do) as the baseline of the same run. The table
gives the median seconds of both and their ratio. Writes ``bench/RESULTS-translate.md``;
nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from controller.translate import SourceObject, parse_object, translate

ROOT = Path(__file__).resolve().parent
NAMESPACES = 50
NODES = 20


def cluster(pods: int) -> list[SourceObject]:
    objs: list[dict[str, Any]] = []
    for n in range(NAMESPACES):
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": f"ns{n}", "labels": {"nodemesh.io/dataplane-mode": "enabled"}}})
        objs.append({
            "apiVersion": "security.nodemesh.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "allow-ns", "namespace": f"ns{n}"},
            "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {
                "namespaces": [f"ns{n}"]}}]}]},
        })
    apps = max(1, pods // 10)
    if apps % NAMESPACES:
        raise ValueError(f"--pods must be a multiple of {10 * NAMESPACES}")
    for i in range(pods):
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": f"ns{i % NAMESPACES}", "uid": f"uid-{i}",
                         "labels": {"app": f"a{i % apps}", "tier": "web"}},
            "spec": {"nodeName": f"node-{i % NODES}", "serviceAccountName": f"sa{i % 100}",
                     "containers": [{"name": "c", "image": "x",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running",
                       "podIP": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"},
        })
    for s in range(apps):
        # the pods of app a<s> are p<s + k * apps>; with apps a multiple of the namespace count
        # they all live in ns<s % 50>, the service's namespace: ten endpoints per service
        objs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc{s}", "namespace": f"ns{s % NAMESPACES}"},
            "spec": {"clusterIP": f"10.96.{(s >> 8) & 255}.{s & 255}",
                     "selector": {"app": f"a{s}", "tier": "web"},
                     "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]},
        })
    return [SourceObject(f"kubernetes/{i}", 0, o) for i, o in enumerate(objs)]


def _median_seconds(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(pods: int, runs: int) -> tuple[float, float, int, int]:
    objects = cluster(pods)
    first = translate(objects)
    if first.errors:
        raise RuntimeError(f"the synthetic cluster does not translate cleanly: {first.errors[:3]}")
    endpoints = sum(len(s.endpoints) for s in first.services.values())
    parse = _median_seconds(lambda: [parse_object(o) for o in objects], runs)
    full = _median_seconds(lambda: translate(objects, last_good=first.accepted), runs)
    return parse, full, len(first.workloads), endpoints


def render(rows: dict[int, tuple[float, float, int, int]], runs: int, started: str) -> str:
    lines = [
        "# Controller translation",
        "",
        f"Produced by `python -m bench.translate` at {started} on {platform.node()} "
        f"(Python {platform.python_version()}); medians of {runs} runs. Baseline: parsing the "
        "same objects one by one (`parse_object`), which any translation must do.",
        "",
        "| pods | services | workloads | endpoints | parse only (s) | translate (s) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pods, (parse, full, workloads, endpoints) in rows.items():
        lines.append(f"| {pods} | {max(1, pods // 10)} | {workloads} | {endpoints} | "
                     f"{parse:.3f} | {full:.3f} | {full / parse:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.translate", description=__doc__)
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "RESULTS-translate.md")
    args = parser.parse_args(argv)
    if args.runs < 1 or any(p < 1 for p in args.pods):
        parser.error("--runs and --pods must be positive")
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = {}
    for pods in args.pods:
        rows[pods] = measure(pods, args.runs)
        print(f"{pods} pods: parse {rows[pods][0]:.3f} s, translate {rows[pods][1]:.3f} s",
              file=sys.stderr)
    table = render(rows, args.runs, started)
    args.output.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
