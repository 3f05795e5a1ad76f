"""``meshctl demo``: build the default local cluster, send traffic through the mesh and show what
the destination ztunnels saw.

For each request: which pod answered, the source and destination SPIFFE identities recorded by the
destination node's ztunnel for that connection, and the TLS version of the pod-to-pod hop. Then a
plaintext attempt from the unenrolled ``outsider`` pod (refused under STRICT) and each node's
metrics URL. Exit status 0 only if every request went through mutual TLS with the expected
identities and the plaintext attempt was refused.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.errors import MeshctlError
from meshctl.local import cluster, inventory, topology
from meshctl.local.components import MeshComponents
from meshctl.local.layout import Layout

ADMIN = "http://127.0.0.1:15000"
RECORD_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    title: str
    url: str
    expected_dst_sa: str


@dataclass(frozen=True)
class Outcome:
    probe: Probe
    served_by: str
    node: str
    src_identity: str
    dst_identity: str
    tls: str
    ok: bool
    error: str = ""


def _run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _connections(state_dir: Path, node: str) -> list[dict[str, Any]]:
    proc = _run(cluster.node_argv(state_dir, node, [
        "curl", "-sS", "--max-time", "3", f"{ADMIN}/connections?limit=100"]))
    if proc.returncode != 0:
        raise MeshctlError(f"cannot read {node}'s ztunnel admin endpoint: {proc.stderr.strip()}")
    records = json.loads(proc.stdout)
    return [r for r in records if isinstance(r, dict)]


def _after(record: dict[str, Any], started: float) -> bool:
    stamp = datetime.datetime.fromisoformat(str(record.get("start", "")).replace("Z", "+00:00"))
    return stamp.timestamp() >= started - 0.5


def _request(state_dir: Path, probe: Probe, client_ip: str,
             node_of: dict[str, str]) -> Outcome:
    started = time.time()
    proc = _run(cluster.pod_argv(state_dir, "default/client",
                                 ["curl", "-sS", "--max-time", "5", probe.url]))
    if proc.returncode != 0:
        return Outcome(probe, "-", "-", "-", "-", "-", False,
                       f"curl exit {proc.returncode}: {proc.stderr.strip()}")
    served_by = str(json.loads(proc.stdout).get("pod", "?"))
    node = node_of.get(served_by, "?")
    deadline = time.monotonic() + RECORD_TIMEOUT
    while time.monotonic() < deadline:
        for rec in _connections(state_dir, node):
            if (rec.get("direction") == "inbound" and _after(rec, started)
                    and str(rec.get("src", "")).split(":")[0] == client_ip):
                src, dst = str(rec.get("srcIdentity")), str(rec.get("dstIdentity"))
                tls = str(rec.get("tlsVersion"))
                ok = (src.endswith("/ns/default/sa/client")
                      and dst.endswith(f"/sa/{probe.expected_dst_sa}") and tls == "TLSv1.3")
                return Outcome(probe, served_by, node, src, dst, tls, ok)
        time.sleep(0.1)
    return Outcome(probe, served_by, node, "-", "-", "-", False,
                   f"no inbound record on {node}'s ztunnel")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _show(state_dir: Path) -> bool:
    pods = {f"{p.namespace}/{p.name}": p for p in inventory.collect(Layout(state_dir))}
    print(inventory.table(list(pods.values())))
    print()
    node_of = {p.name: p.node for p in pods.values() if p.namespace == "default"}
    s1, s2 = pods["default/server-1"], pods["default/server-2"]
    probes = [
        Probe(f"pod IP, other node ({s1.name} on {s1.node})", f"http://{s1.ip}:8080/", "server"),
        Probe(f"pod IP, same node ({s2.name} on {s2.node})", f"http://{s2.ip}:8080/", "server"),
    ] + [Probe(f"service VIP default/server ({i + 1})", "http://10.96.0.10/", "server")
         for i in range(4)]
    outcomes = [_request(state_dir, p, pods["default/client"].ip, node_of) for p in probes]
    rows: list[tuple[str, ...]] = [("request from default/client", "answered by", "seen on",
                                    "source identity", "destination identity", "TLS")]
    for o in outcomes:
        rows.append((o.probe.title, o.served_by, o.node, o.src_identity, o.dst_identity,
                     o.tls if o.ok else f"{o.tls}  FAILED: {o.error or 'unexpected identity'}"))
    print(_table(rows))
    print()

    outsider = _run(cluster.pod_argv(state_dir, "legacy/outsider", [
        "curl", "-sS", "--max-time", "3", f"http://{s1.ip}:8080/"]))
    refused = outsider.returncode != 0
    print(f"plaintext from legacy/outsider (not enrolled) to {s1.ip}:8080: "
          f"{'refused (STRICT mTLS), curl: ' + outsider.stderr.strip() if refused else 'ANSWERED'}")
    print()
    print("metrics (one Prometheus endpoint per node):")
    topo, _ = cluster.load(state_dir)
    for node in topo.nodes:
        print(f"  {node.name}: http://{node.metrics}/metrics")
    print(f"  controller: http://{topology.CONTROLLER_METRICS}/metrics")
    return all(o.ok for o in outcomes) and refused


def run(state_dir: Path, keep: bool) -> int:
    print("nodemesh demo: building the local cluster (`meshctl local up`)…", flush=True)
    cluster.down(state_dir)
    started = time.monotonic()
    topo = cluster.up(cluster.UpConfig(state_dir, components=MeshComponents()))
    print(f"cluster up in {time.monotonic() - started:.1f}s: {len(topo.nodes)} nodes, "
          f"{len(topo.pods)} pods\n", flush=True)
    try:
        ok = _show(state_dir)
    finally:
        if keep:
            print("\n--keep: the cluster stays up; `meshctl local down` removes it")
        else:
            report = cluster.down(state_dir)
            print(f"\ntorn down: {report.killed} processes, {report.netns} namespaces, "
                  f"{report.links} interfaces, {report.cgroups} cgroups removed")
    if not ok:
        print("demo FAILED: see the table above", file=sys.stderr)
        return 1
    return 0
