"""Runs last in the session (file order): ``meshctl local down`` leaves nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.conftest import Cluster


def cgroup2_mount() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise AssertionError("no cgroup2 mount")


def test_down_leaves_nothing(cluster: Cluster) -> None:
    cluster.meshctl("local", "down")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ln for ln in netns.splitlines() if ln.startswith("nm-")], netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [ln for ln in links.splitlines() if ": nm-" in ln], links
    assert not (cgroup2_mount() / "nodemesh").exists()
    assert not Path("/sys/fs/bpf/nodemesh").exists()  # eBPF pins: programs detached
    pattern = "-m ztunnel|-m node_agent|-m controller|meshctl.sampleapp"
    procs = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    assert not [ln for ln in procs.splitlines() if "pgrep" not in ln], procs
