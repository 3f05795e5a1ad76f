from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from controller.translate import SourceObject, translate
from meshapi.ids import SpiffeId

from .helpers import namespace, pod, service


def objs(*bodies: Any, source: str = "a.yaml") -> list[SourceObject]:
    return [SourceObject(source, i, b) for i, b in enumerate(bodies)]


def mutate(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with value=DELETE remove) a dotted path like ``spec.ports[0].port``."""
    out = copy.deepcopy(body)
    parts = path.replace("[", ".[").split(".")
    cur: Any = out
    for part in parts[:-1]:
        cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
    last = parts[-1]
    key: Any = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del cur[key]
    else:
        cur[key] = value
    return out


DELETE = object()


# (case, body, expected object description, expected field path, message fragment)
INVALID: list[tuple[str, Any, str, str, str]] = [
    ("not an object", ["a", "list"], "document 0", "", "expected an object"),
    ("no kind", mutate(pod(), "kind", DELETE), "document 0", "kind", "missing"),
    (
        "unknown kind",
        mutate(pod(), "kind", "Deployment"),
        "document 0",
        "kind",
        "unknown kind 'Deployment'",
    ),
    (
        "bad apiVersion",
        mutate(pod(), "apiVersion", "apps/v1"),
        "Pod in document 0",
        "apiVersion",
        "apps/v1",
    ),
    (
        "no name",
        mutate(pod(), "metadata.name", DELETE),
        "Pod in document 0",
        "metadata.name",
        "missing",
    ),
    (
        "name not string",
        mutate(pod(), "metadata.name", 5),
        "Pod in document 0",
        "metadata.name",
        "expected a string",
    ),
    (
        "bad namespace",
        mutate(pod(), "metadata.namespace", "Bad_NS"),
        "Pod in document 0",
        "metadata.namespace",
        "not a valid namespace",
    ),
    (
        "labels not strings",
        mutate(pod(), "metadata.labels", {"app": 3}),
        "Pod default/web-1",
        "metadata.labels.app",
        "expected a string",
    ),
    (
        "pod without spec",
        mutate(pod(), "spec", DELETE),
        "Pod default/web-1",
        "spec",
        "expected an object",
    ),
    (
        "nodeName mistyped",
        mutate(pod(), "spec.nodeName", 7),
        "Pod default/web-1",
        "spec.nodeName",
        "expected a string",
    ),
    (
        "nodeName missing with IP",
        mutate(pod(), "spec.nodeName", DELETE),
        "Pod default/web-1",
        "spec.nodeName",
        "missing",
    ),
    (
        "bad pod IP",
        mutate(pod(), "status.podIP", "10.0.0.300"),
        "Pod default/web-1",
        "status.podIP",
        "not an IPv4 address",
    ),
    (
        "bad service account",
        mutate(pod(), "spec.serviceAccountName", "UPPER"),
        "Pod default/web-1",
        "spec.serviceAccountName",
        "not a valid service account",
    ),
    (
        "container port mistyped",
        pod(ports=[{"name": "http", "containerPort": "80"}]),
        "Pod default/web-1",
        "spec.containers[0].ports[0].containerPort",
        "expected an integer",
    ),
    (
        "service port missing",
        mutate(service(), "spec.ports[0].port", DELETE),
        "Service default/web",
        "spec.ports[0].port",
        "missing",
    ),
    (
        "service port mistyped",
        mutate(service(), "spec.ports[0].port", "eighty"),
        "Service default/web",
        "spec.ports[0].port",
        "expected an integer",
    ),
    (
        "service port range",
        mutate(service(), "spec.ports[0].port", 70000),
        "Service default/web",
        "spec.ports[0].port",
        "out of range",
    ),
    (
        "targetPort mistyped",
        mutate(service(), "spec.ports[0].targetPort", [1]),
        "Service default/web",
        "spec.ports[0].targetPort",
        "expected an integer",
    ),
    (
        "bad clusterIP",
        mutate(service(), "spec.clusterIP", "nope"),
        "Service default/web",
        "spec.clusterIP",
        "not an IPv4 address",
    ),
    (
        "ports not a list",
        mutate(service(), "spec.ports", {"port": 80}),
        "Service default/web",
        "spec.ports",
        "expected a list",
    ),
    (
        "selector mistyped",
        mutate(service(), "spec.selector", {"app": True}),
        "Service default/web",
        "spec.selector.app",
        "expected a string",
    ),
    (
        "namespace name",
        mutate(namespace("x"), "metadata.name", "Not_A_Label"),
        "Namespace in document 0",
        "metadata.name",
        "not a valid Namespace name",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "obj", "field", "fragment"), INVALID, ids=[c[0] for c in INVALID]
)
def test_invalid_objects_are_rejected_with_file_object_and_field(
    case: str, body: Any, obj: str, field: str, fragment: str
) -> None:
    result = translate(objs(body, source="/cfg/bad.yaml"))
    assert len(result.errors) == 1, result.errors
    err = result.errors[0]
    assert (err.source, err.object, err.field) == ("/cfg/bad.yaml", obj, field)
    assert fragment in err.message
    text = str(err)
    assert "/cfg/bad.yaml" in text and obj in text and field in text
    assert not result.workloads and not result.services


def test_pod_translates_to_workload() -> None:
    p = pod(uid="u-1", annotations={"local.nodemesh.io/netns": "/run/netns/nm-pod-default-web-1"})
    result = translate(objs(p), trust_domain="example.org")
    assert result.errors == ()
    (w,) = result.workloads.values()
    assert w.uid == "u-1" and w.name == "web-1" and w.namespace == "default"
    assert w.identity == SpiffeId("example.org", "default", "web")
    assert w.node == "node-1" and w.ip == ipaddress.IPv4Address("10.78.1.2")
    assert w.netns == "/run/netns/nm-pod-default-web-1"
    assert w.labels == (("app", "web"),)


def test_defaults_and_derived_uid_is_stable() -> None:
    p = mutate(mutate(pod(), "metadata.namespace", DELETE), "spec.serviceAccountName", DELETE)
    a = translate(objs(p)).workloads
    b = translate(objs(copy.deepcopy(p))).workloads
    assert a == b
    (w,) = a.values()
    assert w.namespace == "default" and w.service_account == "default"
    assert len(w.uid) == 36 and w.netns is None
    other = translate(objs(pod(name="web-2"))).workloads
    assert set(other) != set(a)


def test_pod_without_ip_is_not_a_workload_and_not_an_error() -> None:
    pending = pod(ip=None, node=None)
    result = translate(objs(pending))
    assert result.errors == () and result.workloads == {}


L = "nodemesh.io/dataplane-mode"


@pytest.mark.parametrize(
    ("ns_label", "pod_label", "enrolled"),
    [
        (None, None, False),
        (None, "enabled", True),
        ("enabled", None, True),
        ("enabled", "none", False),
        ("enabled", "enabled", True),
        ("disabled", None, False),
        (None, "none", False),
        ("enabled", "other", True),
    ],
)
def test_enrollment(ns_label: str | None, pod_label: str | None, enrolled: bool) -> None:
    labels = {"app": "web"} | ({L: pod_label} if pod_label else {})
    bodies: list[Any] = [pod(labels=labels)]
    if ns_label:
        bodies.append(namespace("default", {L: ns_label}))
    (w,) = translate(objs(*bodies)).workloads.values()
    assert w.enrolled is enrolled


def test_endpoint_selection_by_labels_and_namespace() -> None:
    bodies = [
        pod("a", ip="10.78.1.3", labels={"app": "web", "v": "1"}),
        pod("b", ip="10.78.1.2", labels={"app": "web", "v": "2"}),
        pod("c", ip="10.78.1.4", labels={"app": "db"}),
        pod("d", ns="other", ip="10.78.1.5", labels={"app": "web"}),
        pod("e", ip=None, node=None, labels={"app": "web"}),
        service(),
        service("v1", selector={"app": "web", "v": "1"}),
        service("none", selector={}),
        service("headless", vip="None"),
    ]
    result = translate(objs(*bodies))
    assert result.errors == ()
    web = result.services["default/web"]
    names = {result.workloads[e.uid].name for e in web.endpoints}
    assert names == {"a", "b"}
    assert [str(e.ip) for e in web.endpoints] == ["10.78.1.2", "10.78.1.3"]
    assert web.vip == ipaddress.IPv4Address("10.96.0.10")
    assert [(p.port, p.target_port, p.name) for p in web.ports] == [(80, 8080, "http")]
    assert {result.workloads[e.uid].name for e in result.services["default/v1"].endpoints} == {"a"}
    assert result.services["default/none"].endpoints == ()
    assert result.services["default/headless"].vip is None


def test_named_target_port_resolves_per_endpoint() -> None:
    ports = [{"name": "http", "containerPort": 8080}]
    svc = service(
        ports=[
            {"port": 80, "targetPort": "http", "appProtocol": "http"},
            {"port": 53, "protocol": "UDP"},
        ]
    )
    result = translate(objs(pod("a", ports=ports), pod("b", ip="10.78.1.9", ports=ports), svc))
    assert result.errors == ()
    (port,) = result.services["default/web"].ports
    assert (port.port, port.target_port, port.app_protocol) == (80, 8080, "http")
    # default targetPort = port
    svc2 = service(ports=[{"port": 9090}])
    (p2,) = translate(objs(svc2)).services["default/web"].ports
    assert p2.target_port == 9090


@pytest.mark.parametrize(
    ("ports_b", "fragment"),
    [
        ([{"name": "http", "containerPort": 9090}], "different numbers"),
        ([], "not declared by endpoint pod(s) b"),
    ],
)
def test_named_target_port_disagreement_is_reported(
    ports_b: list[dict[str, Any]], fragment: str
) -> None:
    svc = service(ports=[{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}])
    result = translate(
        objs(
            pod("a", ports=[{"name": "http", "containerPort": 8080}]),
            pod("b", ip="10.78.1.9", ports=ports_b),
            svc,
        )
    )
    (err,) = result.errors
    assert (err.object, err.field) == ("Service default/web", "spec.ports[0].targetPort")
    assert fragment in err.message
    assert [p.port for p in result.services["default/web"].ports] == [81]


def test_last_good_version_stays_when_object_turns_invalid() -> None:
    first = translate(objs(pod(uid="u1"), service()))
    assert first.errors == ()
    broken_pod = mutate(pod(uid="u1"), "status.podIP", "garbage")
    broken_svc = mutate(service(), "spec.ports[0].port", "x")
    second = translate(objs(broken_pod, broken_svc), last_good=first.accepted)
    assert len(second.errors) == 2
    assert second.workloads == first.workloads
    assert second.services == first.services
    # an unnamed broken document keeps whatever was at its position
    third = translate(objs(["junk"], broken_svc), last_good=second.accepted)
    assert third.workloads == first.workloads
    # fixed: the new version is applied
    fixed = translate(objs(pod(uid="u1", ip="10.78.1.77"), service()), last_good=third.accepted)
    assert fixed.errors == ()
    assert str(fixed.workloads["u1"].ip) == "10.78.1.77"
    # removed: gone
    assert translate(objs(service()), last_good=fixed.accepted).workloads == {}


def test_stale_source_keeps_its_objects() -> None:
    first = translate(objs(pod(uid="u1"), source="p.yaml"))
    second = translate([], last_good=first.accepted, stale_sources=["p.yaml"])
    assert second.workloads == first.workloads


def test_duplicate_objects_later_rejected_naming_both_files() -> None:
    a = SourceObject("a.yaml", 0, pod(uid="u1"))
    b = SourceObject("b.yaml", 0, pod(uid="u1", ip="10.78.1.99"))
    result = translate([a, b])
    (err,) = result.errors
    assert err.source == "b.yaml" and "a.yaml" in err.message and "b.yaml" in err.message
    assert err.object == "Pod default/web-1"
    assert str(result.workloads["u1"].ip) == "10.78.1.2"
    # a new file appearing first in order does not displace the one in force
    c = SourceObject("0.yaml", 0, pod(uid="u1", ip="10.78.1.50"))
    again = translate([c, a], last_good=result.accepted)
    assert str(again.workloads["u1"].ip) == "10.78.1.2"
    (err2,) = again.errors
    assert err2.source == "0.yaml" and "a.yaml" in err2.message


def test_service_accounts_and_namespaces_are_accepted() -> None:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}}
    result = translate(objs(sa, namespace("default"), pod()))
    assert result.errors == () and len(result.workloads) == 1


def test_scheduled_identities_include_pods_without_ip_but_not_finished_or_host_network() -> None:
    done = pod("done", ip="10.78.1.9", sa="batch")
    done["status"]["phase"] = "Succeeded"
    host = pod("host", ip="10.77.0.11", sa="agent")
    host["spec"]["hostNetwork"] = True
    objects = [
        namespace("default"),
        pod("new", ip=None, sa="web"),  # scheduled, sandbox not created yet
        pod("pending", node=None, ip=None, sa="queued"),  # not scheduled
        done,
        host,
    ]
    result = translate([SourceObject("f.yaml", i, o) for i, o in enumerate(objects)])
    assert result.errors == ()
    assert result.workloads == {}
    assert result.scheduled == frozenset({("node-1", "default", "web")})
