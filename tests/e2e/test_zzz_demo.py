"""`meshctl demo` (what `make demo` runs), after the session's cluster is gone (file order): it
builds its own cluster, shows identities and TLS versions, and cleans up — or keeps the cluster
with --keep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MESHCTL = [sys.executable, "-m", "meshctl"]


def run(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NODEMESH_STATE_DIR": str(state)}
    return subprocess.run([*MESHCTL, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def nm_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith("nm-")]


def test_demo_shows_identities_and_tears_down(tmp_path: Path, cluster_lock: None) -> None:
    proc = run("demo", state=tmp_path / "state")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = [ln for ln in out.splitlines() if ln.startswith(("pod IP,", "service VIP"))]
    assert len(rows) == 6, out
    for row in rows:
        assert "spiffe://cluster.local/ns/default/sa/client" in row, row
        assert "spiffe://cluster.local/ns/default/sa/server" in row, row
        assert row.rstrip().endswith("TLSv1.3"), row
    assert {"server-1", "server-2"} <= {w for r in rows for w in r.split()}
    assert "refused (STRICT mTLS)" in out
    assert "http://10.77.0.11:15020/metrics" in out and "http://10.77.0.12:15020/metrics" in out
    assert nm_netns() == [], "demo left namespaces behind"


def test_demo_keep_leaves_the_cluster_running(tmp_path: Path, cluster_lock: None) -> None:
    state = tmp_path / "state"
    try:
        proc = run("demo", "--keep", state=state)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "nm-node-1" in nm_netns()
        pods = run("local", "pods", state=state)
        assert "server-1" in pods.stdout
    finally:
        run("local", "down", state=state)
    assert nm_netns() == []
