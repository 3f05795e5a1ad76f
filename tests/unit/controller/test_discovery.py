from __future__ import annotations

import ipaddress
import json

from controller.discovery import DiscoveryHub
from controller.metrics import Metrics
from meshapi.discovery import DiscoveryState, decode
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload

N = NodeName("node-1")


def _w(i: int) -> Workload:
    return Workload(
        PodUid(f"u{i}"),
        f"p{i}",
        "default",
        "web",
        SpiffeId("cluster.local", "default", "web"),
        N,
        ipaddress.IPv4Address(f"10.0.0.{i}"),
        True,
    )


def _state(n: int) -> dict[str, Workload]:
    return {f"u{i}": _w(i) for i in range(1, n + 1)}


def _apply(state: DiscoveryState, lines: list[bytes]) -> None:
    for line in lines:
        state.apply(decode(json.loads(line)))


def test_versions_and_resume() -> None:
    hub = DiscoveryHub(Metrics(), history=3)
    assert hub.update({}, {}) is None  # no change, no version
    for n in range(1, 6):
        delta = hub.update(_state(n), {})
        assert delta is not None and delta.version == n
    # fresh node: snapshot
    sub = hub.subscribe(N)
    assert not sub.resumed and json.loads(sub.initial[0])["type"] == "snapshot"
    # resume within history: exactly the deltas after the version
    node = DiscoveryState()
    _apply(node, sub.initial)
    assert node.version == 5 and set(node.workloads) == set(_state(5))
    resumed = hub.subscribe(N, hub.epoch, 3)
    assert resumed.resumed and [json.loads(x)["version"] for x in resumed.initial] == [4, 5]
    assert hub.subscribe(N, hub.epoch, 5).initial == []
    # too old, wrong epoch, from the future: snapshot
    for epoch, version in [(hub.epoch, 1), ("other", 4), (hub.epoch, 9), (None, None)]:
        s = hub.subscribe(N, epoch, version)
        assert not s.resumed and json.loads(s.initial[0])["type"] == "snapshot"
    # live deltas reach subscribers and apply in order
    hub.update(_state(2), {})
    _apply(node, [sub.queue.get_nowait()])
    assert set(node.workloads) == {"u1", "u2"} and node.version == 6


def test_slow_subscriber_is_cut_and_shutdown_closes_everyone() -> None:
    metrics = Metrics()
    hub = DiscoveryHub(metrics, queue_size=2)
    slow = hub.subscribe(N)
    fast = hub.subscribe(NodeName("node-2"))
    for n in range(1, 3):
        hub.update(_state(n), {})
        fast.queue.get_nowait()
    assert not slow.closed
    hub.update(_state(3), {})
    assert slow.closed and slow.closed_reason == "fell behind"
    assert slow not in hub.subscriptions and fast in hub.subscriptions
    hub.close()
    assert fast.closed and not hub.subscriptions
    assert hub.subscribe(N).closed
