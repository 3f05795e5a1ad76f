"""Fuzz targets of the discovery stream's node side (:mod:`meshapi.discovery`).

* ``discovery.line``: one ndjson line applied to a :class:`DiscoveryState` that holds a real
  snapshot (workloads, a service, an AuthorizationPolicy, a PeerAuthentication): only
  :class:`WireError` escapes, and when it does, the view is exactly what it was (nothing
  half-applied: a delta is applied whole or not at all).
* ``discovery.stream``: bytes through the :class:`LineSplitter` (a small limit, fed in pieces
  whose sizes follow the first byte), every line then applied as above: no line longer than
  the limit comes out, each one is a line of the input, the buffer never holds more than limit + one
  piece, and only :class:`WireError` escapes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from meshapi import discovery
from meshapi.errors import WireError
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Endpoint, Service, ServicePort, Workload
from meshapi.policy import AuthorizationPolicy, PeerAuthentication
from tests.fuzz.harness import target
from tests.fuzz.targets.http import splits


def _workload(name: str, ip: str) -> Workload:
    return Workload(PodUid(f"uid-{name}"), name, "default", name,
                    SpiffeId("cluster.local", "default", name), NodeName("node-1"),
                    ipaddress.IPv4Address(ip), True, (("app", name),))


WORKLOADS = (_workload("a", "10.78.1.2"), _workload("b", "10.78.1.3"))
SERVICE = Service("default", "b", ipaddress.IPv4Address("10.96.0.10"),
                  (ServicePort(80, 8080, "http"),),
                  (Endpoint(PodUid("uid-b"), ipaddress.IPv4Address("10.78.1.3")),))
AUTHZ = AuthorizationPolicy.from_spec("default", "allow-a", {
    "selector": {"matchLabels": {"app": "b"}}, "action": "ALLOW",
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/a"],
                                    "ipBlocks": ["10.78.0.0/16"]}}],
               "to": [{"operation": {"ports": ["8080"], "methods": ["GET"],
                                     "paths": ["/api/*"]}}],
               "when": [{"key": "source.ip", "values": ["10.78.1.2"]}]}],
})
PEER = PeerAuthentication.from_spec("default", "strict", {"mtls": {"mode": "STRICT"}})
SNAPSHOT = discovery.Snapshot("e1", 7, WORKLOADS, (SERVICE,), (AUTHZ,), (PEER,))
DELTA = discovery.Delta(
    "e1", 8, upsert_workloads=(_workload("c", "10.78.1.4"),), upsert_services=(SERVICE,),
    remove_workloads=("uid-a",), remove_services=("default/b",),
    upsert_authorization_policies=(AUTHZ,), upsert_peer_authentications=(PEER,),
    remove_authorization_policies=("default/allow-a",),
    remove_peer_authentications=("default/strict",),
)
HEARTBEAT = discovery.Heartbeat("e1", 7)
#: the wire messages the fuzz tier mutates (tests/fuzz/test_discovery.py)
MESSAGES: list[dict[str, Any]] = [SNAPSHOT.to_wire(), DELTA.to_wire(), HEARTBEAT.to_wire()]


def _view(state: discovery.DiscoveryState) -> tuple[object, ...]:
    return (dict(state.workloads), dict(state.services), dict(state.authorization_policies),
            dict(state.peer_authentications), state.root_namespace, state.path_normalization,
            state.epoch, state.version)


def _apply(state: discovery.DiscoveryState, line: bytes) -> None:
    before = _view(state)
    try:
        state.apply_line(line)
    except WireError:
        assert _view(state) == before, "a rejected message changed the view"


def _fresh() -> discovery.DiscoveryState:
    state = discovery.DiscoveryState()
    state.apply(SNAPSHOT)
    return state


@target("discovery.line", max_bytes=8 * 1024 * 1024)
def discovery_line(data: bytes) -> None:
    _apply(_fresh(), data)


_LIMIT = 4096


@target("discovery.stream", max_bytes=8 * 1024 * 1024)
def discovery_stream(data: bytes) -> None:
    state = _fresh()
    splitter = discovery.LineSplitter(limit=_LIMIT)
    try:
        for piece in splits(data):
            for line in splitter.feed(piece):
                assert 0 < len(line) <= _LIMIT
                assert b"\n" not in line and line in data
                _apply(state, line)
            assert len(splitter._buf) <= _LIMIT + len(piece)
    except WireError as exc:
        assert "exceeds" in str(exc)
