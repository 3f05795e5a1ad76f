"""Lease leader election: the pure rules, then the elector against the fake API server."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.errors import LeaderError
from controller.kube.client import KubeClient
from controller.kube.lease import LeaderElector
from controller.leader import (
    Action,
    LeaseState,
    decide,
    lease_body,
    micro_time,
    parse_lease,
    release_body,
)
from controller.metrics import Metrics
from tests.fakes.kubeapi import FakeKubeApi

from .kubehelpers import eventually, fake_api, kube_client

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
RETRY = dt.timedelta(seconds=2)


def state(holder: str, renewed_ago: float, duration: int = 15, rv: str = "7") -> LeaseState:
    return LeaseState(
        holder=holder,
        duration=dt.timedelta(seconds=duration),
        acquire_time=NOW - dt.timedelta(seconds=100),
        renew_time=NOW - dt.timedelta(seconds=renewed_ago),
        transitions=3,
        resource_version=rv,
    )


@pytest.mark.parametrize(
    ("lease", "action", "wait"),
    [
        (None, Action.CREATE, 0.0),
        (state("me", 100), Action.RENEW, 0.0),
        (state("other", 1), Action.FOLLOW, 2.0),
        (state("other", 14), Action.FOLLOW, 1.0),  # expires before the retry interval
        (state("other", 15), Action.TAKE_OVER, 0.0),
        (state("", 1), Action.TAKE_OVER, 0.0),  # released
    ],
)
def test_decide(lease: LeaseState | None, action: Action, wait: float) -> None:
    decision = decide(lease, "me", NOW, RETRY)
    assert decision.action is action
    assert decision.wait.total_seconds() == pytest.approx(wait)


def test_lease_bodies() -> None:
    created = lease_body("l", "ns", "me", dt.timedelta(seconds=15), NOW, None)
    assert "resourceVersion" not in created["metadata"]
    assert created["spec"] == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-01T12:00:00.000000Z",
        "renewTime": "2026-01-01T12:00:00.000000Z",
        "leaseTransitions": 0,
    }
    renewed = lease_body("l", "ns", "me", dt.timedelta(seconds=15), NOW, state("me", 5))
    assert renewed["metadata"]["resourceVersion"] == "7"
    assert renewed["spec"]["leaseTransitions"] == 3
    assert renewed["spec"]["acquireTime"] == micro_time(NOW - dt.timedelta(seconds=100))
    taken = lease_body("l", "ns", "me", dt.timedelta(seconds=15), NOW, state("other", 50))
    assert taken["spec"]["leaseTransitions"] == 4
    assert taken["spec"]["acquireTime"] == micro_time(NOW)
    released = release_body(state("me", 1), "l", "ns", NOW)
    assert released["spec"]["holderIdentity"] == ""
    assert released["metadata"]["resourceVersion"] == "7"


def test_parse_lease_round_trips_what_we_write() -> None:
    body: Any = lease_body("l", "ns", "me", dt.timedelta(seconds=15), NOW, state("other", 50))
    body["metadata"]["resourceVersion"] = "9"
    parsed = parse_lease(body, "Lease ns/l")
    assert parsed.holder == "me" and parsed.renew_time == NOW and parsed.transitions == 4
    assert parsed.expires() == NOW + dt.timedelta(seconds=15)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "not a Lease"),
        ({"metadata": {}, "spec": {}}, "resourceVersion"),
        ({"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": 5}}, "holderIdentity"),
        (
            {"metadata": {"resourceVersion": "1"}, "spec": {"renewTime": "yesterday"}},
            "spec.renewTime 'yesterday'",
        ),
        (
            {"metadata": {"resourceVersion": "1"}, "spec": {"leaseDurationSeconds": -1}},
            "leaseDurationSeconds",
        ),
    ],
)
def test_parse_lease_rejects_malformed(body: object, fragment: str) -> None:
    with pytest.raises(LeaderError, match=fragment) as info:
        parse_lease(body, "Lease ns/l")
    assert "Lease ns/l" in str(info.value)


# ---- against the fake API server ---------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeApi]:
    async with fake_api() as api:
        api.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nodemesh-system"}}
        )
        yield api


def elector(client: KubeClient, identity: str, **kw: Any) -> LeaderElector:
    return LeaderElector(
        client,
        "nodemesh-system",
        "nodemesh-controller",
        identity,
        Metrics(),
        lease_duration=kw.pop("lease_duration", 3.0),
        renew_interval=kw.pop("renew_interval", 0.3),
        retry_interval=kw.pop("retry_interval", 0.2),
    )


async def test_acquire_renew_and_release(fake: FakeKubeApi, tmp_path: Path) -> None:
    client = kube_client(fake, tmp_path / "kc")
    e = elector(client, "ctrl-a")
    stop = asyncio.Event()
    task = asyncio.create_task(e.run(stop))
    try:
        await eventually(lambda: e.is_leader)
        first = fake.get_object("Lease", "nodemesh-system", "nodemesh-controller")
        assert first is not None and first["spec"]["holderIdentity"] == "ctrl-a"
        await eventually(
            lambda: (
                fake.get_object("Lease", "nodemesh-system", "nodemesh-controller")["spec"][  # type: ignore[index]
                    "renewTime"
                ]
                != first["spec"]["renewTime"]
            )
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        client.close()
    released = fake.get_object("Lease", "nodemesh-system", "nodemesh-controller")
    assert released is not None and released["spec"]["holderIdentity"] == ""
    assert not e.is_leader


async def test_takes_over_an_expired_lease_and_waits_for_a_live_one(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.apply(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "nodemesh-controller", "namespace": "nodemesh-system"},
            "spec": {
                "holderIdentity": "ghost",
                "leaseDurationSeconds": 1,
                "renewTime": micro_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)),
                "leaseTransitions": 5,
            },
        }
    )
    client = kube_client(fake, tmp_path / "kc")
    e = elector(client, "ctrl-a")
    stop = asyncio.Event()
    task = asyncio.create_task(e.run(stop))
    try:
        await asyncio.sleep(0.5)
        assert not e.is_leader  # ghost's lease is still live
        await eventually(lambda: e.is_leader, within=5)
        lease = fake.get_object("Lease", "nodemesh-system", "nodemesh-controller")
        assert lease is not None and lease["spec"]["leaseTransitions"] == 6
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        client.close()


async def test_a_leader_that_cannot_renew_stops_leading_before_expiry(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    client = kube_client(fake, tmp_path / "kc")
    e = elector(client, "ctrl-a", lease_duration=3.0, renew_interval=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(e.run(stop))
    try:
        await eventually(lambda: e.is_leader)
        fake.fail_next("*", "/apis/coordination.k8s.io", 500, count=1000)
        # lease duration 3 s minus the 2 s margin: it must give up within about a second
        await eventually(lambda: not e.is_leader, within=2.5)
        assert "500" in str(e.status()["lastError"])
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        client.close()


async def test_two_electors_never_lead_together(fake: FakeKubeApi, tmp_path: Path) -> None:
    clients = [kube_client(fake, tmp_path / f"kc{i}") for i in range(3)]
    electors = [elector(c, f"ctrl-{i}") for i, c in enumerate(clients)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop)) for e in electors]
    try:
        await eventually(lambda: any(e.is_leader for e in electors))
        for _ in range(50):
            assert sum(e.is_leader for e in electors) <= 1
            await asyncio.sleep(0.02)
        assert sum(e.is_leader for e in electors) == 1
        conflicts = [r for r in fake.requests if r.method in ("POST", "PUT") and "leases" in r.path]
        assert conflicts  # all of them tried
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for c in clients:
            c.close()
