"""Translation rules that matter for objects as a Kubernetes API serves them: EndpointSlices of
selector-less Services, terminated and host-network pods."""

from __future__ import annotations

from typing import Any

import pytest

from controller.translate import SourceObject, translate

from .helpers import pod, service


def objs(*bodies: Any) -> list[SourceObject]:
    return [SourceObject("a.yaml", i, b) for i, b in enumerate(bodies)]


def endpoint_slice(
    name: str = "db-x1",
    service_name: str | None = "db",
    endpoints: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service_name} if service_name else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "addressType": address_type,
        "endpoints": endpoints or [],
    }


def ref(uid: str) -> dict[str, Any]:
    return {"kind": "Pod", "name": "x", "namespace": "default", "uid": uid}


DB = service("db", selector={}, vip="10.96.0.11", ports=[{"port": 5432, "name": "tcp"}])


def test_selectorless_service_takes_endpoints_from_its_slices() -> None:
    t = translate(
        objs(
            pod("db-1", uid="u1", ip="10.78.1.2", labels={"app": "db"}),
            pod("db-2", uid="u2", ip="10.78.1.3", labels={"app": "db"}),
            pod("db-3", uid="u3", ip="10.78.1.4", labels={"app": "db"}),
            DB,
            endpoint_slice(
                endpoints=[
                    {"addresses": ["10.78.1.2"], "targetRef": ref("u1")},
                    {
                        "addresses": ["10.78.1.3"],
                        "conditions": {"ready": False},
                        "targetRef": ref("u2"),
                    },
                    {"addresses": ["10.78.1.4"], "conditions": {"ready": None}},  # by address
                    {"addresses": ["192.0.2.1"]},  # outside the mesh: not an endpoint
                ]
            ),
            endpoint_slice(
                "other-x", service_name="other", endpoints=[{"addresses": ["10.78.1.3"]}]
            ),
        )
    )
    assert not t.errors, t.errors
    assert [e.uid for e in t.services["default/db"].endpoints] == ["u1", "u3"]


def test_selector_wins_over_slices_and_unlabelled_slices_belong_to_no_service() -> None:
    t = translate(
        objs(
            pod("web-1", uid="u1"),
            pod("db-1", uid="u2", ip="10.78.1.3", labels={"app": "db"}),
            service(),  # selects app=web
            endpoint_slice("web-x", service_name="web", endpoints=[{"addresses": ["10.78.1.3"]}]),
            endpoint_slice("lost", service_name=None, endpoints=[{"addresses": ["10.78.1.3"]}]),
            DB,
        )
    )
    assert [e.uid for e in t.services["default/web"].endpoints] == ["u1"]
    assert t.services["default/db"].endpoints == ()


@pytest.mark.parametrize(
    ("slice_body", "field", "fragment"),
    [
        ({**endpoint_slice(), "addressType": None}, "addressType", "must not be empty"),
        (endpoint_slice(endpoints=[{"addresses": ["nope"]}]), "endpoints[0].addresses[0]", "IPv4"),
        (
            endpoint_slice(endpoints=[{"conditions": {"ready": "yes"}}]),
            "endpoints[0].conditions.ready",
            "boolean",
        ),
        ({**endpoint_slice(), "endpoints": {}}, "endpoints", "list"),
    ],
)
def test_malformed_slices_are_rejected_with_the_field(
    slice_body: dict[str, Any], field: str, fragment: str
) -> None:
    t = translate(objs(slice_body))
    (err,) = t.errors
    assert err.object == "EndpointSlice default/db-x1" and err.field == field
    assert fragment in err.message


def test_ipv6_slices_are_ignored_not_errors() -> None:
    body = endpoint_slice(address_type="IPv6", endpoints=[{"addresses": ["fd00::1"]}])
    assert not translate(objs(body)).errors


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminated_pods_are_not_workloads(phase: str) -> None:
    done = pod("job-1", uid="u1")
    done["status"]["phase"] = phase
    running = pod("web-2", uid="u2", ip="10.78.1.3")
    running["status"]["phase"] = "Running"
    t = translate(objs(done, running))
    assert set(t.workloads) == {"u2"} and not t.errors


def test_host_network_pods_are_not_workloads() -> None:
    host = pod("agent", uid="u1")
    host["spec"]["hostNetwork"] = True
    assert translate(objs(host)).workloads == {}
    host["spec"]["hostNetwork"] = "yes"
    (err,) = translate(objs(host)).errors
    assert err.field == "spec.hostNetwork"
