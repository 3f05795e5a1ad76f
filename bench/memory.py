"""Memory of the mesh against one sidecar per pod, from ``/proc/<pid>/smaps_rollup``.

Per pod count (``STEPS``): the pods are ``app-node-1-<k>`` on node-1, each holding ``PER_POD``
idle HTTP connections to ``server-1`` (node-2) — opened by :mod:`bench.holder` from inside each
pod, one ``GET /`` answered on each. Mesh: every pod of node-1 but the ``k <= n`` app pods, and
every app pod of node-2, is opted out; the ztunnels are restarted first, so no earlier run's
memory is counted; the pods are enrolled in growing subsets; node-1's agent + ztunnel (RSS and
PSS summed) are read after each step, and node-2's (which then serves ``server-1`` alone) beside
them. Sidecars: namespace ``default`` unenrolled, one HAProxy per app pod (bench/sidecar.py, the
same configuration as the sidecar column) plus ``server-1``'s; the client sidecars are summed,
``server-1``'s is shown beside them. PSS shares each shared page among the processes mapping it
(HAProxy's text, the ztunnel's Python), so sums of PSS are the fair total; RSS counts shared
pages once per process.

Per connection: ``CONNS`` idle connections from ``PER_CONN_PODS`` app pods of node-1 to
``server-1`` through fresh processes (ztunnels restarted; new sidecars), the growth of both
ends' memory divided by the number of connections. ``server-1``'s HAProxy proxies at most
``sidecar.max_connections()`` (two file descriptors each within the 20 000 hard limit), so
the sidecar figure is taken at that count.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.common import (
    APP_PORT,
    CLIENT_POD,
    ROOT,
    SERVER_POD,
    mesh_processes,
    set_enrollment,
    topology_pods,
)
from bench.control import opt_out, pod_objects, restart_ztunnels, restore, wait_listeners
from bench.sidecar import Sidecars, max_connections

STEPS = (1, 10, 50, 100, 200)
PER_POD = 10
CONNS = 10_000
#: the per-connection figure spreads its connections over this many pods: the ztunnel takes at
#: most 64 HBONE connections of 100 streams from one peer pod (6 400 proxied connections)
PER_CONN_PODS = 10
SETTLE_S = 1.0


@dataclass(frozen=True)
class Mem:
    rss_kib: float
    pss_kib: float

    def __add__(self, other: Mem) -> Mem:
        return Mem(self.rss_kib + other.rss_kib, self.pss_kib + other.pss_kib)

    def __sub__(self, other: Mem) -> Mem:
        return Mem(self.rss_kib - other.rss_kib, self.pss_kib - other.pss_kib)

    @classmethod
    def failed(cls) -> Mem:
        return cls(math.nan, math.nan)

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    @property
    def pss_mib(self) -> float:
        return self.pss_kib / 1024


def parse_smaps_rollup(text: str) -> Mem:
    """``Rss:`` and ``Pss:`` (kB) of a ``/proc/<pid>/smaps_rollup`` (pure)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key in ("Rss", "Pss"):
            number, _, unit = rest.strip().partition(" ")
            if unit != "kB":
                raise ValueError(f"unexpected unit in smaps_rollup line {line!r}")
            values[key] = float(number)
    if set(values) != {"Rss", "Pss"}:
        raise ValueError("smaps_rollup without Rss/Pss lines")
    return Mem(values["Rss"], values["Pss"])


def total(mems: Iterable[Mem]) -> Mem:
    out = Mem(0.0, 0.0)
    for m in mems:
        out = out + m
    return out


def read_mem(pids: Iterable[int]) -> Mem:
    """Summed RSS and PSS of the processes (all must exist: a vanished one fails the figure)."""
    return total(parse_smaps_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())
                 for pid in pids)


@dataclass(frozen=True)
class ScanPoint:
    pods: int
    mesh_node1: Mem
    mesh_node2: Mem
    sidecars: Mem
    server_sidecar: Mem


@dataclass(frozen=True)
class PerConnection:
    conns_mesh: int
    mesh_node1: Mem  # growth of node-1's agent + ztunnel
    mesh_node2: Mem
    conns_sidecar: int
    client_sidecar: Mem
    server_sidecar: Mem

    def per_conn_mesh(self) -> Mem:
        return _per(self.mesh_node1 + self.mesh_node2, self.conns_mesh)

    def per_conn_sidecar(self) -> Mem:
        return _per(self.client_sidecar + self.server_sidecar, self.conns_sidecar)


def _per(m: Mem, n: int) -> Mem:
    if n <= 0:
        return Mem.failed()
    return Mem(m.rss_kib / n, m.pss_kib / n)


class Holder:
    """A :mod:`bench.holder` process: idle connections from inside pods, closed on ``close``."""

    def __init__(self, host: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.holder", host, str(port)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.count = 0

    def add(self, netns: str, cgroup: str, count: int) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{netns} {cgroup} {count}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok "):
            raise RuntimeError(f"holder could not open {count} connections in {netns}: "
                               f"{answer or 'it exited'}")
        self.count = int(answer.split()[1])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def settle() -> None:
    """Let the proxies finish what the last connections started (handshakes, buffers)."""
    time.sleep(SETTLE_S)


# --- the runs (root, a cluster with >= max(STEPS) app pods on node-1) -------------------------


def _mesh_mem(node: str) -> Mem:
    return read_mem(p.pid for p in mesh_processes(node))


def mesh_scan(server_ip: str, out: list[tuple[int, Mem, Mem]],
              steps: Iterable[int] = STEPS) -> None:
    """Append (pods, node-1 mesh, node-2 mesh) per step to ``out`` (kept when a later step
    fails); see the module doc."""
    objects = pod_objects()
    node1 = sorted((n for n in objects if n.startswith("app-node-1-")),
                   key=lambda n: int(n.rsplit("-", 1)[1]))
    steps = sorted(steps)
    if len(node1) < steps[-1]:
        raise RuntimeError(f"{steps[-1]} app pods needed on node-1, the cluster has {len(node1)}")
    quiet = {n: o for n, o in objects.items()
             if n.startswith("app-") or n in (CLIENT_POD, "server-2")}
    topo = topology_pods()
    opt_out(quiet)
    try:
        restart_ztunnels()
        with Holder(server_ip, APP_PORT) as holder:
            done = 0
            for n in steps:
                new = node1[done:n]
                restore({k: objects[k] for k in new})
                wait_listeners("node-1", node1[:n])
                for name in new:
                    pod, cgroup = topo[name]
                    holder.add(pod.netns_path, cgroup, PER_POD)
                done = n
                settle()
                out.append((n, _mesh_mem("node-1"), _mesh_mem("node-2")))
                print(f"  mesh, {n} pods: node-1 {out[-1][1]}, node-2 {out[-1][2]}",
                      file=sys.stderr)
    finally:
        restore(quiet)


def sidecar_scan(server_ip: str, out: list[tuple[int, Mem, Mem]],
                 steps: Iterable[int] = STEPS) -> None:
    """Append (pods, client sidecars summed, server-1's sidecar) per step to ``out``, with the
    namespace unenrolled."""
    topo = topology_pods()
    node1 = sorted((n for n in topo if n.startswith("app-node-1-")),
                   key=lambda n: int(n.rsplit("-", 1)[1]))
    set_enrollment(False)
    try:
        with Sidecars() as sc, Holder(server_ip, APP_PORT) as holder:
            pod, cgroup = topo[SERVER_POD]
            server = sc.start_server(SERVER_POD, server_ip, pod.netns_path, cgroup)
            done = 0
            for n in sorted(steps):
                for name in node1[done:n]:
                    pod, cgroup = topo[name]
                    sc.start_client(name, server_ip, pod.netns_path, cgroup)
                    holder.add(pod.netns_path, cgroup, PER_POD)
                done = n
                settle()
                pids = sc.pids()
                clients = [pid for name, pid in pids.items() if name != SERVER_POD]
                if len(clients) != n or server.pid() is None:
                    raise RuntimeError(f"{n} client sidecars expected, {len(clients)} running")
                out.append((n, read_mem(clients), read_mem([pids[SERVER_POD]])))
                print(f"  sidecars, {n} pods: clients {out[-1][1]}, server {out[-1][2]}",
                      file=sys.stderr)
    finally:
        set_enrollment(True)


def merge_scans(mesh: list[tuple[int, Mem, Mem]], sidecars: list[tuple[int, Mem, Mem]],
                steps: Iterable[int] = STEPS) -> list[ScanPoint]:
    """One row per pod count; a count missing from a scan (it failed) is ``failed`` there."""
    m = {n: (a, b) for n, a, b in mesh}
    s = {n: (a, b) for n, a, b in sidecars}
    f = Mem.failed()
    return [ScanPoint(n, *m.get(n, (f, f)), *s.get(n, (f, f))) for n in sorted(steps)]


def per_connection(server_ip: str, conns: int = CONNS) -> PerConnection:
    """Idle connections from ``PER_CONN_PODS`` app pods of node-1 to ``server-1``: the memory
    they add (module doc)."""
    topo = topology_pods()
    sources = [topo[f"app-node-1-{k}"] for k in range(1, PER_CONN_PODS + 1)]
    spod, scgroup = topo[SERVER_POD]
    restart_ztunnels()
    before1, before2 = _mesh_mem("node-1"), _mesh_mem("node-2")
    with Holder(server_ip, APP_PORT) as holder:
        for pod, cgroup in sources:
            holder.add(pod.netns_path, cgroup, conns // PER_CONN_PODS)
        settle()
        mesh1, mesh2 = _mesh_mem("node-1") - before1, _mesh_mem("node-2") - before2
    side_each = min(conns, max_connections() - 50) // PER_CONN_PODS
    set_enrollment(False)
    try:
        with Sidecars() as sc:
            server = sc.start_server(SERVER_POD, server_ip, spod.netns_path, scgroup)
            clients = [sc.start_client(pod.name, server_ip, pod.netns_path, cgroup)
                       for pod, cgroup in sources]
            c_pids = [c.pid() for c in clients]
            s_pid = server.pid()
            if s_pid is None or None in c_pids:
                raise RuntimeError("a sidecar did not start")
            ok = [p for p in c_pids if p is not None]
            c0, s0 = read_mem(ok), read_mem([s_pid])
            with Holder(server_ip, APP_PORT) as holder:
                for pod, cgroup in sources:
                    holder.add(pod.netns_path, cgroup, side_each)
                settle()
                c1, s1 = read_mem(ok), read_mem([s_pid])
    finally:
        set_enrollment(True)
    return PerConnection(conns // PER_CONN_PODS * PER_CONN_PODS, mesh1, mesh2,
                         side_each * PER_CONN_PODS, c1 - c0, s1 - s0)
