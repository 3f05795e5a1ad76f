"""Root fixtures for the local cluster builder.

The local cluster's names and addresses are fixed by docs/CONTRACTS.md, so these tests cannot run
beside a real cluster or beside each other: every test holds an exclusive lock for its whole
duration and fails (without touching anything) when a cluster is already up on this host.
Every test's cluster lives in its own state dir under ``tmp_path`` and is always torn down.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.local import cluster, topology
from meshctl.local.netlink import IpRoute2
from tests.netns.meshctl.fakes import SleepComponents

LOCK = "/run/lock/nodemesh-local-cluster.lock"


def leftovers() -> list[str]:
    nl = IpRoute2()
    found = [n for n in nl.list_netns() if n.startswith("nm-")]
    found += [n for n in nl.list_links() if n.startswith("nm-")]
    from meshctl.local import cgroups

    if cgroups.subtree(cgroups.cgroup2_mount()).exists():
        found.append("cgroup nodemesh/")
    return found


@pytest.fixture
def exclusive() -> Iterator[None]:
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = leftovers()
        if existing:
            pytest.fail(
                f"a local cluster is already up on this host ({existing[:4]}); these tests use "
                "the contract's fixed names: run `meshctl local down` (or wait) and retry"
            )
        yield


@pytest.fixture
def state_dir(exclusive: None, tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        cluster.down(state)


@pytest.fixture
def local_cluster(state_dir: Path) -> topology.Topology:
    return cluster.up(cluster.UpConfig(state_dir, components=SleepComponents(), timeout=20))
