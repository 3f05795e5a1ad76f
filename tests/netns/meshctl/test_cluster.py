from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshctl.local import cgroups, cluster, processes, topology
from meshctl.local.netlink import IpRoute2
from tests.netns.meshctl.conftest import leftovers

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[3]


def in_pod(pod: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", f"nm-pod-{pod}", *argv],
                          capture_output=True, text=True, timeout=20, check=check)


def ping(src: str, dst: str) -> None:
    assert shutil.which("ping"), "ping is missing: apt-get install iputils-ping"
    done = in_pod(src, "ping", "-c1", "-W1", dst, check=False)
    assert done.returncode == 0, f"{src} -> {dst}: {done.stdout}{done.stderr}"


def curl(src: str, url: str, *extra: str) -> str:
    deadline = time.monotonic() + 10
    while True:  # the app may still be binding its port
        done = in_pod(src, "curl", "-sS", "--max-time", "2", *extra, url, check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done.stdout
        time.sleep(0.1)


def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)


def mesh_pids() -> set[int]:
    nl = IpRoute2()
    pids = cgroups.pids(cgroups.subtree(cgroups.cgroup2_mount()))
    return pids | processes.pids_in_netns(
        f"/run/netns/{n}" for n in nl.list_netns() if n.startswith("nm-"))


def assert_all_gone(state: Path, pids: set[int]) -> None:
    assert leftovers() == []
    assert [p for p in pids if processes.alive(p)] == []
    if state.exists():
        left = [p for p in state.rglob("*") if p.is_file() and p.suffix != ".log"]
        assert left == []


def test_pods_reach_each_other_across_and_within_nodes(
    local_cluster: topology.Topology, state_dir: Path
) -> None:
    ping("default-client", "10.78.2.2")  # server-1 on node-2
    ping("default-client", "10.78.1.3")  # server-2 on node-1
    ping("legacy-outsider", "10.78.1.2")
    answer = json.loads(curl("default-client", "http://10.78.2.2:8080/"))
    assert answer["pod"] == "server-1" and answer["namespace"] == "default"
    assert answer["peer"].startswith("10.78.1.2:")
    assert curl("legacy-outsider", "http://10.78.1.3:8080/echo", "-d", "hello") == "hello"
    # controller stand-in's root cert was copied to every node, tokens are private
    for node in local_cluster.nodes:
        node_dir = state_dir / "nodes" / node.name
        assert (node_dir / "root-cert.pem").read_text() == "fake\n"
        assert (node_dir / "token").stat().st_mode & 0o777 == 0o600


def test_every_pod_process_runs_in_its_netns_and_cgroup(
    local_cluster: topology.Topology,
) -> None:
    mount = cgroups.cgroup2_mount()
    for pod in local_cluster.pods:
        procs = (Path(pod.cgroup(mount)) / "cgroup.procs").read_text().split()
        assert len(procs) == 1, pod.key
        assert os.stat(f"/proc/{procs[0]}/ns/net").st_ino == os.stat(pod.netns_path).st_ino


def test_exec_runs_in_the_pod(local_cluster: topology.Topology, state_dir: Path) -> None:
    client = next(p for p in local_cluster.pods if p.name == "client")
    done = meshctl("local", "exec", "--state-dir", str(state_dir), "default/client", "--",
                   "sh", "-c", "cat /proc/self/cgroup; ip -4 -o addr show dev eth0")
    assert done.returncode == 0, done.stderr
    assert f"0::/nodemesh/node-1/{client.uid}" in done.stdout
    assert "inet 10.78.1.2/24" in done.stdout
    assert meshctl("local", "exec", "--state-dir", str(state_dir), "client", "--",
                   "sh", "-c", "exit 7").returncode == 7
    missing = meshctl("local", "exec", "--state-dir", str(state_dir), "nobody", "--", "true")
    assert missing.returncode == 1 and "no pod 'nobody'" in missing.stderr
    pods = json.loads(meshctl("local", "pods", "--json", "--state-dir", str(state_dir)).stdout)
    assert {p["name"]: p["enrolled"] for p in pods} == {
        "client": True, "server-1": True, "server-2": True, "outsider": False}


def test_down_removes_everything(local_cluster: topology.Topology, state_dir: Path) -> None:
    pids = mesh_pids()
    assert len(pids) == len(local_cluster.pods) + 1 + 2 * len(local_cluster.nodes)
    done = meshctl("local", "down", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    assert_all_gone(state_dir, pids)
    again = meshctl("local", "down", "--state-dir", str(state_dir))
    assert again.returncode == 0, again.stderr


def test_up_refuses_to_build_over_an_existing_cluster(
    local_cluster: topology.Topology, state_dir: Path, tmp_path: Path
) -> None:
    done = meshctl("local", "up", "--state-dir", str(tmp_path / "other"))
    assert done.returncode == 1 and "meshctl local down" in done.stderr


BUILDER = """
import sys
from pathlib import Path
from meshctl.local import cluster
from tests.netns.meshctl.fakes import SleepComponents
cluster.up(cluster.UpConfig(Path(sys.argv[1]), nodes=3, pods_per_node=2,
                            components=SleepComponents(hang=True), timeout=120))
"""


@pytest.mark.parametrize("when", ["network", "processes"])
def test_down_after_builder_crash(state_dir: Path, when: str) -> None:
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(state_dir)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        # "network": kill while the pods' namespaces are being created;
        # "processes": kill while up waits for the controller, everything started
        ready = (lambda: Path("/run/netns/nm-pod-default-client").exists()) if when == "network" \
            else (lambda: (state_dir / "controller" / "controller.pid").exists())
        while not ready():
            assert builder.poll() is None, "the builder exited early"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        builder.send_signal(signal.SIGKILL)
    finally:
        builder.wait()
    (state_dir / "cluster.json").unlink(missing_ok=True)
    pids = mesh_pids()
    done = meshctl("local", "down", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    assert_all_gone(state_dir, pids)


def test_down_with_nothing_up(exclusive: None, tmp_path: Path) -> None:
    done = meshctl("local", "down", "--state-dir", str(tmp_path / "never"))
    assert done.returncode == 0, done.stderr
    assert cluster.down(tmp_path / "never").killed == 0
