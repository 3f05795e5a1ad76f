"""The Agent with the real iptables redirector in a real pod netns: restart repairs nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import subprocess
from collections.abc import Callable, Mapping

import pytest

from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload
from node_agent.reconcile import Agent
from node_agent.redirect.iptables import IptablesRedirector
from node_agent.redirect.plan import Settings

pytestmark = pytest.mark.root


class Session:
    def __init__(self, served: set[str]) -> None:
        self.served = set(served)
        self.closed = asyncio.Event()
        self.log: list[str] = []

    async def add(self, workload: Workload, netns_fd: int) -> None:
        self.log.append(f"add {workload.key}")
        self.served.add(workload.key)

    async def keep(self, uid: str) -> None:
        self.log.append(f"keep {uid}")

    async def delete(self, uid: str) -> None:
        self.log.append(f"delete {uid}")
        self.served.discard(uid)

    async def snapshot_complete(self) -> None:
        self.log.append("snapshot_complete")


class Source:
    def __init__(self, workloads: Mapping[str, Workload]) -> None:
        self.workloads = dict(workloads)

    async def wait_synced(self) -> None:
        return None


async def _unused(_: object) -> object:
    raise AssertionError


def save(ns: str) -> str:
    """The nat table with counters, minus iptables-save's timestamped comment lines."""
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy-save", "-c", "-t", "nat"],
                         check=True, capture_output=True, text=True).stdout
    return "".join(line for line in out.splitlines(keepends=True) if not line.startswith("#"))


async def test_restart_keeps_everything(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("pod")
    w = Workload(
        uid=PodUid("u1"), name="client", namespace="default", service_account="default",
        identity=SpiffeId("cluster.local", "default", "default"), node=NodeName("node-1"),
        ip=ipaddress.IPv4Address("10.78.1.2"), enrolled=True, netns=f"/run/netns/{ns}",
    )
    source = Source({"u1": w})

    def new_agent() -> Agent:
        return Agent("node-1", Settings(), IptablesRedirector(), source, _unused)  # type: ignore[arg-type]

    first, s1 = new_agent(), Session(set())
    await first.observe()
    await first.sync(s1, snapshot=True)
    assert s1.log == ["add u1", "snapshot_complete"]
    assert first.pods["u1"].status == "redirected"
    before = save(ns)
    assert "NODEMESH_OUTPUT" in before

    second, s2 = new_agent(), Session({"u1"})  # agent restarted, ztunnel still serves u1
    await second.observe()
    await second.sync(s2, snapshot=True)
    assert s2.log == ["keep u1", "snapshot_complete"]
    assert save(ns) == before

    source.workloads["u1"] = dataclasses.replace(w, enrolled=False)
    await second.sync(s2, snapshot=False)
    assert s2.log[-1] == "delete u1"
    assert "NODEMESH" not in save(ns)
