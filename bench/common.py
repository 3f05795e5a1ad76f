"""What every part of the harness shares: running commands (in the host, a pod or a node), the
local cluster's state (pods, enrollment, the mesh's processes), and the statistics (medians
that refuse to hide a failure, nearest-rank percentiles).

A failed measurement is ``math.nan`` everywhere, so a table shows ``failed`` for it; a median
of runs of which one failed is ``nan`` too (no figure from the others).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from meshctl.local import cgroups
from meshctl.local.cluster import load
from meshctl.local.layout import Layout, default_state_dir
from meshctl.local.nsenter import join_cgroup, join_netns
from meshctl.local.topology import Pod

ROOT = Path(__file__).resolve().parent.parent
MESHCTL = [sys.executable, "-m", "meshctl"]
SERVER_POD = "server-1"
CLIENT_POD = "client"
IPERF_PORT = 5201
APP_PORT = 8080
CLUSTER_LOCK = "/run/lock/nodemesh-local-cluster.lock"
NODES = ("node-1", "node-2")

T = TypeVar("T")


def run(argv: list[str], *, timeout: float = 120, check: bool = True,
        preexec: Callable[[], None] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
            f"stderr: {proc.stderr[-2000:]}"
        )
    return proc.stdout


def meshctl(*args: str, timeout: float = 300, check: bool = True) -> str:
    return run([*MESHCTL, *args], timeout=timeout, check=check)


def pod_exec(pod: str, *argv: str, timeout: float = 120, check: bool = True) -> str:
    """``meshctl local exec POD -- ARGV``: the pod's netns and cgroup, as a user would."""
    return meshctl("local", "exec", pod, "--", *argv, timeout=timeout, check=check)


def topology_pods() -> dict[str, tuple[Pod, str]]:
    """Every pod of the running cluster with its cgroup directory, from ``cluster.json``."""
    topo, mount = load(default_state_dir())
    return {p.name: (p, p.cgroup(mount)) for p in topo.pods}


def joiner(netns: str, cgroup: str | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that puts the child into a pod (cgroup, then netns) before it execs:
    ``meshctl.local.podexec``'s own steps, without starting a Python per command (the memory
    benchmark starts hundreds of sidecars). Runs in the forked child only, never in ours."""
    def join() -> None:
        if cgroup:
            join_cgroup(cgroup)
        join_netns(netns)
    return join


def in_netns(netns: str, *argv: str, timeout: float = 60, check: bool = True) -> str:
    return run(list(argv), timeout=timeout, check=check, preexec=joiner(netns))


def pods() -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(meshctl("local", "pods", "--json"))}


def wait_for(what: str, fn: Callable[[], T | None], timeout: float,
             interval: float = 0.005) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def set_enrollment(enabled: bool, timeout: float = 120) -> None:
    """Enroll or unenroll namespace ``default`` and wait until the node agents agree (for every
    pod of the namespace that is not opted out, so no enrollment work overlaps a measurement)."""
    labels = "{nodemesh.io/dataplane-mode: enabled}" if enabled else "{}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="nm-bench-", delete=False) as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"
                f"  labels: {labels}\n")
    try:
        meshctl("apply", "-f", f.name)
    finally:
        os.unlink(f.name)

    def settled() -> bool:
        wanted = [p for p in pods().values() if p.get("namespace") == "default"]
        return all(p.get("redirection") == "redirected" if enabled and p.get("enrolled")
                   else p.get("redirection") in (None, "removed") for p in wanted)
    wait_for(f"enrollment={enabled} to take effect", settled, timeout, interval=0.2)
    time.sleep(0.5)  # let the ztunnel finish binding after the agent's report


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


@dataclass(frozen=True)
class MeshProcess:
    node: str
    kind: str  # "agent" or "ztunnel"
    pid: int


def mesh_processes(node: str, kinds: Iterable[str] = ("agent", "ztunnel")) -> list[MeshProcess]:
    """The node's mesh processes, found by the cgroup ``meshctl local up`` put them in (so a
    helper the agent forks is counted too while it runs)."""
    _, mount = load(default_state_dir())
    out = []
    for kind in kinds:
        for pid in sorted(cgroups.pids(cgroups.component_cgroup(mount, f"{node}-{kind}"))):
            out.append(MeshProcess(node, kind, pid))
    if not out:
        raise RuntimeError(f"no mesh processes found for {node}: is the cluster up?")
    return out


# --- statistics (pure) ------------------------------------------------------------------------


def median_or_nan(values: Iterable[float]) -> float:
    """The median, or ``nan`` when there is no value or any run failed (``nan``)."""
    vals = list(values)
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan
    return float(statistics.median(vals))


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); ``nan`` for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return float(ordered[min(rank, len(ordered)) - 1])


def ratio(value: float, base: float) -> float:
    """``value / base``, ``nan`` when either failed or the base is zero."""
    if math.isnan(value) or math.isnan(base) or base == 0:
        return math.nan
    return value / base


def attempt(what: str, fn: Callable[[], T], default: T) -> T:
    """Run one measurement; on failure print why and return ``default`` (a ``failed`` figure),
    so one broken measurement does not lose the others."""
    try:
        return fn()
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"  {what} failed: {exc}", file=sys.stderr)
        return default
