"""Reconcile decisions (pure, table-driven) and the Agent executing them against fakes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping

import pytest

from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload
from node_agent.errors import NetnsError
from node_agent.reconcile import (
    Action,
    Add,
    Agent,
    Apply,
    Delete,
    Keep,
    Remove,
    Report,
    SnapshotComplete,
    decide,
)
from node_agent.redirect.plan import EMPTY, Plan, Settings, plan_for_pod

SETTINGS = Settings()


def wl(uid: str, ip: str = "10.78.1.2", enrolled: bool = True, node: str = "node-1") -> Workload:
    return Workload(
        uid=PodUid(uid), name=uid, namespace="default", service_account="default",
        identity=SpiffeId("cluster.local", "default", "default"), node=NodeName(node),
        ip=ipaddress.IPv4Address(ip), enrolled=enrolled, netns=f"/run/netns/nm-pod-{uid}",
    )


A = wl("a")
A_NEW_IP = wl("a", ip="10.78.1.9")
A_OFF = wl("a", enrolled=False)
PLAN = plan_for_pod(A.ip, SETTINGS)
A_NS = A.netns or ""
NO_NS = dataclasses.replace(wl("n"), netns=None)

CASES: dict[str, tuple[dict[str, Workload], dict[str, Plan], dict[str, Workload], set[str], bool,
                       list[Action]]] = {
    "new pod": ({"a": A}, {}, {}, set(), False, [Apply(A, PLAN), Add(A)]),
    "new pod, rules already there": ({"a": A}, {"a": PLAN}, {}, set(), False, [Add(A)]),
    "unchanged pod after agent restart": (
        {"a": A}, {"a": PLAN}, {}, {"a"}, True, [Keep(A), SnapshotComplete()],
    ),
    "agent restart, rules tampered": (
        {"a": A}, {"a": EMPTY}, {}, {"a"}, True, [Apply(A, PLAN), Keep(A), SnapshotComplete()],
    ),
    "steady state, nothing to do": ({"a": A}, {"a": PLAN}, {"a": A}, {"a"}, False, []),
    "changed IP": (
        {"a": A_NEW_IP}, {"a": PLAN}, {"a": A}, {"a"}, False,
        [Apply(A_NEW_IP, PLAN), Add(A_NEW_IP)],
    ),
    "unenrolled": (
        {"a": A_OFF}, {"a": PLAN}, {"a": A}, {"a"}, False, [Delete("a"), Remove("a", A_NS)],
    ),
    "pod deleted": ({}, {"a": PLAN}, {"a": A}, {"a"}, False, [Delete("a"), Remove("a", A_NS)]),
    "unenrolled while the agent was down": (
        {"a": A_OFF}, {"a": PLAN}, {}, {"a"}, True,
        [Delete("a"), Remove("a", A_NS), SnapshotComplete()],
    ),
    "ztunnel restarted: re-add all": (
        {"a": A, "b": wl("b")}, {"a": PLAN, "b": PLAN}, {"a": A, "b": wl("b")}, set(), True,
        [Add(A), Add(wl("b")), SnapshotComplete()],
    ),
    "other node and unenrolled without rules are ignored": (
        {"x": wl("x", node="node-2", enrolled=False), "y": wl("y", enrolled=False)},
        {"y": EMPTY}, {}, set(), False, [],
    ),
    "pod without netns is reported": (
        {"n": NO_NS}, {}, {}, set(), False,
        [Report(NO_NS, "no network namespace known for the pod")],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_decide(name: str) -> None:
    local, rules, added, served, snapshot, expected = CASES[name]
    assert decide(local, rules, added, frozenset(served), SETTINGS, snapshot) == expected


class FakeRedirector:
    mode = "iptables"

    def __init__(self) -> None:
        self.netns: dict[str, Plan] = {}
        self.missing: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def apply(self, netns_path: str, plan: Plan, pod_ip: ipaddress.IPv4Address) -> bool:
        self.calls.append(("apply", netns_path))
        if netns_path in self.missing:
            raise NetnsError(f"cannot open netns {netns_path}")
        changed = self.netns.get(netns_path) != plan
        self.netns[netns_path] = plan
        return changed

    async def read(self, netns_path: str) -> Plan:
        self.calls.append(("read", netns_path))
        return self.netns.get(netns_path, EMPTY)

    async def remove(self, netns_path: str) -> bool:
        self.calls.append(("remove", netns_path))
        return self.netns.pop(netns_path, None) is not None

    async def collect(self, live_netns: Iterable[str]) -> int:
        self.calls.append(("collect", ",".join(sorted(live_netns))))
        return 0


class FakeSession:
    def __init__(self, served: set[str], log: list[tuple[str, str]]) -> None:
        self.served = set(served)
        self.closed = asyncio.Event()
        self.log = log

    async def add(self, workload: Workload, netns_fd: int) -> None:
        self.log.append(("add", workload.key))
        self.served.add(workload.key)

    async def keep(self, uid: str) -> None:
        self.log.append(("keep", uid))

    async def delete(self, uid: str) -> None:
        self.log.append(("delete", uid))
        self.served.discard(uid)

    async def snapshot_complete(self) -> None:
        self.log.append(("snapshot_complete", ""))


class FakeSource:
    def __init__(self, workloads: Mapping[str, Workload]) -> None:
        self.workloads = dict(workloads)

    async def wait_synced(self) -> None:
        return None


async def _no_connect(_: object) -> object:
    raise AssertionError("not used")


def agent(source: FakeSource, red: FakeRedirector) -> Agent:
    return Agent("node-1", SETTINGS, red, source, _no_connect)  # type: ignore[arg-type]


async def test_agent_orders_apply_before_add_and_delete_before_remove(tmp_path: object) -> None:
    import os
    netns = os.path.join(str(tmp_path), "ns-a")
    with open(netns, "w"):  # noqa: ASYNC230 - a tiny marker file stands in for a netns
        pass
    a = dataclasses.replace(A, netns=netns)
    source, red = FakeSource({"a": a}), FakeRedirector()
    ag = agent(source, red)
    log: list[tuple[str, str]] = []
    session = FakeSession(set(), log)
    red.calls = log  # one timeline for both
    await ag.observe()
    await ag.sync(session, snapshot=True)
    assert log == [
        ("collect", netns), ("read", netns), ("apply", netns), ("add", "a"),
        ("snapshot_complete", ""),
    ]
    assert ag.pods["a"].status == "redirected" and ag.pods["a"].in_ztunnel

    log.clear()
    await ag.sync(session, snapshot=False)
    assert log == []

    source.workloads["a"] = dataclasses.replace(a, enrolled=False)
    await ag.sync(session, snapshot=False)
    assert log == [("delete", "a"), ("remove", netns)]
    assert ag.pods["a"].status == "removed"


async def test_agent_restart_repairs_nothing_when_all_is_in_place(tmp_path: object) -> None:
    source, red = FakeSource({"a": A}), FakeRedirector()
    red.netns[A.netns or ""] = PLAN
    ag = agent(source, red)
    log: list[tuple[str, str]] = []
    await ag.observe()
    await ag.sync(FakeSession({"a"}, log), snapshot=True)
    assert log == [("keep", "a"), ("snapshot_complete", "")]
    assert [c for c in red.calls if c[0] not in ("read", "collect")] == []


async def test_missing_netns_is_reported_and_retried() -> None:
    source, red = FakeSource({"a": A}), FakeRedirector()
    red.missing.add(A.netns or "")
    ag = agent(source, red)
    log: list[tuple[str, str]] = []
    session = FakeSession(set(), log)
    await ag.sync(session, snapshot=True)
    assert log == [("snapshot_complete", "")]
    assert ag.pods["a"].status == "error" and "cannot open netns" in (ag.pods["a"].last_error or "")
    await ag.sync(session, snapshot=False)
    assert red.calls.count(("apply", A.netns or "")) == 2


async def test_probe_source_auto_follows_the_nodes_route_and_replans(tmp_path: object) -> None:
    import os
    netns = os.path.join(str(tmp_path), "ns-a")
    with open(netns, "w"):  # noqa: ASYNC230 - a tiny marker file stands in for a netns
        pass
    a = dataclasses.replace(A, netns=netns)
    source, red = FakeSource({"a": a}), FakeRedirector()
    answers = {ipaddress.IPv4Address("10.78.1.2"): ipaddress.IPv4Address("10.78.1.1")}
    asked: list[ipaddress.IPv4Address] = []

    def probe(ip: ipaddress.IPv4Address) -> ipaddress.IPv4Address | None:
        asked.append(ip)
        return answers.get(ip)

    ag = Agent("node-1", Settings(), red, source, _no_connect,  # type: ignore[arg-type]
               probe_source=probe)
    session = FakeSession(set(), [])
    await ag.sync(session, snapshot=True)
    assert asked == [a.ip]
    assert ag.settings.host_probe_ip == ipaddress.IPv4Address("10.78.1.1")
    assert red.netns[netns] == plan_for_pod(a.ip, Settings(host_probe_ip=answers[a.ip]))
    # the route changes (say, the bridge was re-addressed): every pod is planned again
    answers[a.ip] = ipaddress.IPv4Address("10.78.1.254")
    await ag.sync(session, snapshot=False)
    assert red.netns[netns] == plan_for_pod(a.ip, Settings(host_probe_ip=answers[a.ip]))


# ---- metrics ------------------------------------------------------------------------------------


def sample(ag: Agent, name: str, **labels: str) -> float | None:
    return ag.metrics.registry.get_sample_value(name, labels)


async def test_metrics_follow_pod_states_and_redirection_errors(tmp_path: object) -> None:
    import os
    netns = os.path.join(str(tmp_path), "ns-a")
    with open(netns, "w"):  # noqa: ASYNC230 - a tiny marker file stands in for a netns
        pass
    a = dataclasses.replace(A, netns=netns)
    b = dataclasses.replace(wl("b", ip="10.78.1.3"), netns="/nonexistent/ns-b")
    source, red = FakeSource({"a": a, "b": b}), FakeRedirector()
    red.missing.add("/nonexistent/ns-b")
    ag = agent(source, red)
    assert sample(ag, "nodemesh_agent_redirection_errors_total",
                  mode="iptables", operation="apply") == 0
    session = FakeSession(set(), [])
    await ag.sync(session, snapshot=True)

    def pods(state: str) -> float | None:
        return sample(ag, "nodemesh_agent_pods", state=state)

    assert (pods("redirected"), pods("error"), pods("pending"), pods("removed")) == (1, 1, 0, 0)
    assert sample(ag, "nodemesh_agent_redirection_errors_total",
                  mode="iptables", operation="apply") == 1
    assert sample(ag, "nodemesh_agent_pod_enroll_duration_seconds_count") == 1
    await ag.sync(session, snapshot=False)  # b is retried, and fails again
    assert sample(ag, "nodemesh_agent_redirection_errors_total",
                  mode="iptables", operation="apply") == 2
    source.workloads["a"] = dataclasses.replace(a, enrolled=False)
    await ag.sync(session, snapshot=False)
    assert (pods("redirected"), pods("error"), pods("removed")) == (0, 1, 1)
    assert sample(ag, "nodemesh_agent_redirection_errors_total",
                  mode="iptables", operation="remove") == 0


async def test_zds_connection_state_and_disconnects() -> None:
    from meshapi.backoff import Backoff
    from node_agent.errors import ZdsError

    source, red = FakeSource({}), FakeRedirector()
    sessions: list[FakeSession] = []
    attempts = 0
    reconnect, held, changed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Cm:
        def __init__(self, session: FakeSession) -> None:
            self.session = session

        async def __aenter__(self) -> FakeSession:
            return self.session

        async def __aexit__(self, *exc: object) -> None:
            return None

    async def connect(on_close: object) -> Cm:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ZdsError("cannot connect to the ztunnel: refused")
        if attempts == 3:
            held.set()
            await reconnect.wait()
        sessions.append(FakeSession(set(), []))
        return Cm(sessions[-1])

    async def until(cond: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not cond():
                changed.clear()
                await changed.wait()

    ag = Agent("node-1", SETTINGS, red, source, connect, on_status=changed.set,
               backoff=Backoff(base=0.001, cap=0.001))
    assert sample(ag, "nodemesh_agent_zds_connected") == 0
    task = asyncio.create_task(ag.run())
    try:
        await until(lambda: ag.ztunnel_connected)
        assert sample(ag, "nodemesh_agent_zds_connected") == 1
        assert sample(ag, "nodemesh_agent_zds_disconnects_total") == 1  # the refused attempt
        # the ztunnel goes away: the agent notices, counts it and reconnects
        sessions[0].closed.set()
        ag.notify()
        async with asyncio.timeout(5):
            await held.wait()  # reconnecting, held
        assert sample(ag, "nodemesh_agent_zds_connected") == 0
        reconnect.set()
        await until(lambda: len(sessions) == 2 and ag.ztunnel_connected)
        assert sample(ag, "nodemesh_agent_zds_disconnects_total") == 2
        assert sample(ag, "nodemesh_agent_zds_connected") == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sessions[1].log == [("snapshot_complete", "")]
