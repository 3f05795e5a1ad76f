"""Benchmark: what the mesh adds to pod start on Kubernetes, measured at the CNI plugin.

On the default local cluster, node-1's agent is replaced by one in Kubernetes mode against the
fake API server (``tests/fakes/kubenode.py``), and new pod sandboxes are handed to the real CNI
plugin binary exactly as containerd hands them over. The time of each ``CNI_COMMAND=ADD`` call
(process start to exit) is what the mesh adds to a pod's start:

* ``pass-through``: a pod that is not enrolled (the baseline: plugin start, socket round trip,
  the agent's lookup, nothing else);
* ``enrolled``: a pod of a service account whose certificate the ztunnel already holds (the
  usual case: redirection put in place, the ztunnel's listeners up and acked);
* ``enrolled, new identity``: each pod has a service account of its own, so the ztunnel first
  gets a certificate from the controller (key generation, CSR, signing);
* ``DEL`` of an enrolled pod.

Each row has ``--pods`` samples; the table gives p50, p90 and max. Writes
``bench/RESULTS-kubernetes.md``; nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import CLUSTER_LOCK, ROOT, meshctl, percentile, pods
from tests.fakes.kubenode import (
    ExtraPod,
    KubeNode,
    build_cni_plugin,
    kube_node_agent,
    make_pod,
    pod_object,
    remove_pod,
)

ROWS = ("pass-through", "enrolled", "enrolled, new identity", "DEL (enrolled)")


def _wait(what: str, fn: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _timed_add(node: KubeNode, pod: ExtraPod, name: str, uid: str) -> float:
    started = time.perf_counter()
    res = node.cni("ADD", pod.netns, "default", name, uid, pod.ip, f"sandbox-{name}")
    took = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(f"CNI ADD of {name} failed: {res.stdout}\n{node.log()}")
    return took


def measure(node: KubeNode, samples: int, tmp: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {row: [] for row in ROWS}
    made: list[ExtraPod] = []
    fresh = [f"bench-sa-{i}" for i in range(samples)]
    # the controller (local mode) must know the new pods to sign their identities: scheduled on
    # node-1, no IP yet, as the API server holds them at sandbox creation
    objects: list[dict[str, object]] = []
    plan: list[tuple[str, str, str, str]] = []  # (row, name, sa, uid)
    for i in range(samples):
        plan.append(("pass-through", f"bench-plain-{i}", "client", str(uuid.uuid4())))
        plan.append(("enrolled", f"bench-known-{i}", "client", str(uuid.uuid4())))
        plan.append(("enrolled, new identity", f"bench-new-{i}", fresh[i], str(uuid.uuid4())))
    for row, name, sa, uid in plan:
        obj = pod_object(name, "default", sa, uid)
        if row == "pass-through":
            obj["metadata"]["labels"]["nodemesh.io/dataplane-mode"] = "none"
        node.fake.apply(obj)
        objects.append(obj)
    manifest = tmp / "bench-pods.yaml"
    manifest.write_text("\n---\n".join(json.dumps(o) for o in objects))
    meshctl("apply", "-f", str(manifest))
    time.sleep(1.0)  # the controller's inotify watch picks the file up; let it settle
    try:
        for i, (row, name, _sa, uid) in enumerate(plan):
            pod = make_pod(f"b{i}", f"10.78.1.{100 + i}")
            made.append(pod)
            out[row].append(_timed_add(node, pod, name, uid))
            if row != "pass-through":
                started = time.perf_counter()
                res = node.cni("DEL", pod.netns, "default", name, uid, pod.ip, f"sandbox-{name}")
                if res.returncode != 0:
                    raise RuntimeError(f"CNI DEL of {name} failed: {res.stdout}")
                out["DEL (enrolled)"].append(time.perf_counter() - started)
    finally:
        for pod in made:
            remove_pod(pod)
        meshctl("delete", "-f", str(manifest), check=False)
    return out


def render(results: dict[str, dict[str, list[float]]], samples: int, started: str) -> str:
    modes = list(results)
    lines = [
        "# Pod start on Kubernetes: what the CNI plugin adds",
        "",
        f"Run {started} on {platform.node()} ({platform.machine()}, "
        f"kernel {platform.release()}), `python -m bench.kubernetes --pods {samples}`: "
        f"{samples} pods per row and mode, each a new sandbox handed to the real `nodemesh-cni` "
        "binary by the benchmark as containerd would, node-1's agent in Kubernetes mode against "
        "the fake API server. Milliseconds, from the plugin's start to its exit (p50 / p90 / max).",
        "",
        "| CNI call | " + " | ".join(modes) + " |",
        "|---|" + "---:|" * len(modes),
    ]
    for row in ROWS:
        cells = []
        for mode in modes:
            v = [x * 1000 for x in results[mode][row]]
            cells.append(f"{percentile(v, 50):.1f} / {percentile(v, 90):.1f} / {max(v):.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`enrolled` minus `pass-through` is what redirection costs a pod's start: the rules or "
        "BPF state in the pod's netns and the ztunnel's three listeners, acked, before the "
        "plugin returns. `new identity` adds the ztunnel's certificate request to the "
        "controller.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kubernetes", description=__doc__)
    parser.add_argument("--pods", type=int, default=30, help="samples per row (1-45)")
    parser.add_argument("--redirect-mode", choices=["both", "iptables", "ebpf"], default="both")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS-kubernetes.md")
    args = parser.parse_args()
    if not 1 <= args.pods <= 45:
        parser.error("--pods must be between 1 and 45 (node-1's pod addresses .100-.234)")
    modes = ["iptables", "ebpf"] if args.redirect_mode == "both" else [args.redirect_mode]
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    plugin = build_cni_plugin()
    results: dict[str, dict[str, list[float]]] = {}
    with open(CLUSTER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for mode in modes:
            meshctl("local", "down")
            meshctl("local", "up", "--redirect-mode", mode, timeout=900)
            try:
                state_dir = _state_dir()
                with tempfile.TemporaryDirectory(prefix="nm-bench-kube-") as d, \
                        kube_node_agent(state_dir, meshctl, Path(d), plugin, _restored) as node:
                    _wait("the Kubernetes agent to be ready", lambda n=node: subprocess.run(
                        [sys.executable, "-m", "node_agent.probe", "--ready",
                         str(n.status_file)], capture_output=True).returncode == 0, 60)
                    print(f"CNI ADD/DEL timings ({mode}, {args.pods} pods per row):",
                          file=sys.stderr)
                    results[mode] = measure(node, args.pods, Path(d))
            finally:
                meshctl("local", "down")
    table = render(results, args.pods, started)
    args.output.write_text(table)
    print(table)
    return 0


def _state_dir() -> Path:
    from meshctl.local.layout import default_state_dir

    return default_state_dir()


def _restored() -> None:
    _wait("node-1's own agent to take over again",
          lambda: pods()["client"].get("redirection") == "redirected", 60)


if __name__ == "__main__":
    raise SystemExit(main())
