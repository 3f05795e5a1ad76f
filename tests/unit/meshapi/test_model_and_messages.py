from __future__ import annotations

import ipaddress
import json

import pytest

from meshapi import discovery, zds
from meshapi.errors import WireError
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Endpoint, Service, ServicePort, Workload


def workload(uid: str = "u1", ip: str = "10.78.1.2", enrolled: bool = True) -> Workload:
    return Workload(
        uid=PodUid(uid),
        name="client",
        namespace="default",
        service_account="client",
        identity=SpiffeId("cluster.local", "default", "client"),
        node=NodeName("node-1"),
        ip=ipaddress.IPv4Address(ip),
        enrolled=enrolled,
        labels=(("app", "client"),),
        netns="/run/netns/nm-pod-default-client",
    )


def service() -> Service:
    return Service(
        namespace="default",
        name="server",
        vip=ipaddress.IPv4Address("10.96.0.10"),
        ports=(ServicePort(80, 8080, "http"),),
        endpoints=(Endpoint(PodUid("u2"), ipaddress.IPv4Address("10.78.2.2")),),
    )


def test_workload_round_trip_through_json() -> None:
    w = workload()
    assert Workload.from_wire(json.loads(json.dumps(w.to_wire()))) == w


def test_service_round_trip_and_http_detection() -> None:
    s = service()
    assert Service.from_wire(json.loads(json.dumps(s.to_wire()))) == s
    assert s.port(80) is not None and s.port(80).is_http  # type: ignore[union-attr]
    assert not ServicePort(5432, 5432, "tcp-postgres").is_http
    assert ServicePort(81, 81, "web", app_protocol="http").is_http


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.pop("uid"), "workload.uid"),
        (lambda d: d.update(ip="10.0.0.300"), "workload.ip"),
        (lambda d: d.update(identity="spiffe://x/y"), "workload.identity"),
        (lambda d: d.update(labels={"a": 1}), "workload.labels.a"),
        (lambda d: d.update(enrolled="yes"), "workload.enrolled"),
        (lambda d: d.update(namespace="Bad_NS"), "workload.namespace"),
    ],
)
def test_workload_errors_name_the_field(mutate, path: str) -> None:  # type: ignore[no-untyped-def]
    d = dict(workload().to_wire())
    mutate(d)
    with pytest.raises(WireError) as info:
        Workload.from_wire(d)
    assert info.value.path == path


def test_service_port_range_error_path() -> None:
    d = service().to_wire()
    d["ports"][0]["port"] = 70000
    with pytest.raises(WireError) as info:
        Service.from_wire(d)
    assert info.value.path == "service.ports[0].port"


def test_discovery_snapshot_then_deltas() -> None:
    state = discovery.DiscoveryState()
    snap = discovery.Snapshot("e1", 3, (workload(),), (service(),))
    change = state.apply(discovery.decode(json.loads(json.dumps(snap.to_wire()))))
    assert change.full and change.workloads == {"u1"}
    assert state.resume_params() == {"epoch": "e1", "version": "3"}

    new_w = workload("u3", "10.78.1.3")
    delta = discovery.diff_to_delta(
        "e1", 4, state.workloads, {**state.workloads, "u3": new_w}, state.services, {}
    )
    assert delta is not None
    change = state.apply(discovery.decode(json.loads(json.dumps(delta.to_wire()))))
    assert change.workloads == {"u3"} and change.services == {"default/server"}
    assert set(state.workloads) == {"u1", "u3"} and state.services == {}

    with pytest.raises(WireError, match="fresh snapshot"):
        state.apply(discovery.Delta("e1", 9))
    with pytest.raises(WireError, match="fresh snapshot"):
        state.apply(discovery.Delta("other", 5))
    assert state.apply(discovery.Heartbeat("e1", 4)).empty


def test_diff_to_delta_equal_is_none() -> None:
    w = {"u1": workload()}
    assert discovery.diff_to_delta("e", 1, w, dict(w), {}, {}) is None


@pytest.mark.parametrize(
    "message",
    [
        zds.Hello(("a", "b")),
        zds.AddPod(1, workload()),
        zds.KeepPod(2, "a"),
        zds.DeletePod(3, "a"),
        zds.SnapshotComplete(4),
        zds.Ack(5, None),
        zds.Ack(6, "netns gone"),
    ],
)
def test_zds_round_trip(message: zds.Message) -> None:
    assert zds.decode(zds.encode(message)) == message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[]", "expected an object"),
        (b'{"type": "add", "seq": 1}', "workload"),
        (b'{"type": "dance", "seq": 1}', "unknown message type"),
        (b'{"type": "keep", "seq": -1, "uid": "a"}', "out of range"),
        (b"x" * (zds.MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_zds_rejects(data: bytes, fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        zds.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "keep", "seq": 1, "uid": ' + b"[" * 30000 + b"]" * 30000 + b"}",
        b'{"type": "ack", "seq": 1' + b"0" * 4400 + b"}",
        b'{"type": "ack", "seq": 1, "seq": 2, "error": null}',
    ],
    ids=["deep-nesting", "5000-digit-seq", "duplicate-key"],
)
def test_zds_decode_refuses_hostile_json_with_wire_error(data: bytes) -> None:
    # deep nesting raised RecursionError and the long number ValueError (issue 10)
    with pytest.raises(WireError):
        zds.decode(data)
