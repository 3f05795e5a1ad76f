"""The node agent's pure view of its node on Kubernetes (node_agent.kube.state)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from node_agent.kube.state import (
    REDIRECTION_ANNOTATION,
    CniPod,
    NodePods,
    PodProblem,
    annotation_changes,
    workload_from_pod,
)

NODE = "node-1"


def pod(
    name: str,
    uid: str,
    ns: str = "apps",
    node: str = NODE,
    ip: str | None = "10.1.0.5",
    labels: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": "web"},
        "status": {"phase": "Running"},
    }
    if ip:
        obj["status"]["podIP"] = ip
    for k, v in extra.items():
        section, _, field = k.partition("__")
        obj[section][field] = v
    return obj


ENROLLED = {"nodemesh.io/dataplane-mode": "enabled"}


def test_workload_fields_and_identity() -> None:
    w = workload_from_pod(pod("a", "u1"), ENROLLED, NODE, "example.org", None, "/proc/9/ns/net")
    assert w is not None
    assert str(w.identity) == "spiffe://example.org/ns/apps/sa/web"
    assert (w.enrolled, w.netns, str(w.ip), w.node) == (True, "/proc/9/ns/net", "10.1.0.5", NODE)


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (pod("a", "u1", node="node-2"), "another node"),
        (pod("a", "u1", spec__hostNetwork=True), "host network"),
        (pod("a", "u1", status__phase="Succeeded"), "finished"),
        (pod("a", "u1", ip=None), "no IP yet and no CNI call"),
    ],
)
def test_not_a_workload(obj: dict[str, Any], why: str) -> None:
    assert workload_from_pod(obj, ENROLLED, NODE, "cluster.local", None, None) is None, why


def test_cni_ip_and_netns_before_the_kubelet_reports_the_ip() -> None:
    cni = CniPod("c1", "/var/run/netns/cni-1", ipaddress.IPv4Address("10.1.0.9"))
    w = workload_from_pod(pod("a", "u1", ip=None), ENROLLED, NODE, "cluster.local", cni, "/x")
    assert w is not None and str(w.ip) == "10.1.0.9" and w.netns == "/var/run/netns/cni-1"


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (pod("A_bad", "u1"), "metadata.name"),
        (pod("a", ""), "metadata.uid"),
        (pod("a", "u1", ip="fe80::1"), "status.podIP"),
        (pod("a", "u1", spec__serviceAccountName="Bad SA"), "spec.serviceAccountName"),
        (pod("a", "u1", labels={"x": 1}), "metadata.labels"),  # type: ignore[dict-item]
    ],
)
def test_invalid_pods_name_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(PodProblem, match=field.replace(".", r"\.")):
        workload_from_pod(obj, ENROLLED, NODE, "cluster.local", None, None)


def store(*objs: dict[str, Any]) -> dict[tuple[str, str], object]:
    return {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs}


def ns(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


async def test_node_pods_enrollment_follows_namespace_and_opt_out() -> None:
    changes: list[int] = []
    pods = NodePods(NODE, "cluster.local", lambda: changes.append(1))
    pods.set_pods(store(pod("a", "u1"), pod("b", "u2", ip="10.1.0.6",
                                            labels={"nodemesh.io/dataplane-mode": "none"})))
    pods.set_namespaces(store(ns("apps", ENROLLED)))
    assert not pods.synced  # no /proc scan yet
    pods.set_scanned({})
    await pods.wait_synced()
    assert {u: w.enrolled for u, w in pods.workloads.items()} == {"u1": True, "u2": False}
    # the pod without a netns is what a /proc scan looks for
    assert pods.missing_netns() == {"u1": ipaddress.IPv4Address("10.1.0.5")}
    pods.set_scanned({"u1": "/proc/7/ns/net"})
    assert pods.workloads["u1"].netns == "/proc/7/ns/net"
    assert pods.missing_netns() == {}
    n = len(changes)
    pods.set_namespaces(store(ns("apps", {})))
    assert not pods.workloads["u1"].enrolled and len(changes) == n + 1


def test_cni_entry_kept_until_pod_seen_then_dropped_with_the_pod() -> None:
    pods = NodePods(NODE, "cluster.local", lambda: None)
    pods.set_namespaces(store(ns("apps", ENROLLED)))
    pods.set_pods(store())
    cni = CniPod("c1", "/var/run/netns/cni-1", ipaddress.IPv4Address("10.1.0.9"))
    pods.cni_added("u1", cni)
    pods.set_pods(store())  # the watch has not shown the pod yet: entry kept
    pods.set_pods(store(pod("a", "u1", ip=None)))
    assert pods.workloads["u1"].netns == "/var/run/netns/cni-1"
    pods.set_pods(store())  # pod deleted: entry dropped
    pods.set_pods(store(pod("a", "u1", ip=None)))
    assert "u1" not in pods.workloads


def test_cni_del_drops_the_sandbox() -> None:
    pods = NodePods(NODE, "cluster.local", lambda: None)
    pods.set_namespaces(store(ns("apps", ENROLLED)))
    pods.set_pods(store(pod("a", "u1", ip=None)))
    pods.cni_added("u1", CniPod("c1", "/n1", ipaddress.IPv4Address("10.1.0.9")))
    assert "u1" in pods.workloads
    pods.cni_deleted(None, "other-sandbox")
    assert "u1" in pods.workloads
    pods.cni_deleted(None, "c1")
    assert "u1" not in pods.workloads


def test_fallback_namespaces() -> None:
    pods = NodePods(NODE, "cluster.local", lambda: None)
    assert pods.fallback_namespaces() is None  # nothing known yet: nothing let through
    pods.set_namespaces(store(ns("apps", ENROLLED), ns("web", {}), ns("mixed", {}),
                              ns("broken", {"bad label": 1})))
    assert pods.fallback_namespaces() is None  # pods not synced yet
    pods.set_pods(store(pod("a", "u1"), pod("m", "u2", ns="mixed", labels=ENROLLED),
                        pod("w", "u3", ns="web")))
    # enrolled, opted into by a pod of this node, or unreadable: off the list
    assert pods.fallback_namespaces() == ["web"]
    pods.set_pods(store(pod("a", "u1"), pod("w", "u3", ns="web", labels={"bad": 2})))
    assert pods.fallback_namespaces() == ["mixed"]  # a pod whose labels cannot be read


def test_invalid_pod_reported_not_raised() -> None:
    pods = NodePods(NODE, "cluster.local", lambda: None)
    pods.set_namespaces(store(ns("apps", ENROLLED)))
    pods.set_pods(store(pod("a", "u1", ip="not-an-ip"), pod("b", "u2", ip="10.1.0.7")))
    assert list(pods.workloads) == ["u2"]
    assert "status.podIP" in pods.problems["apps/a"]


def test_annotation_changes() -> None:
    pods = NodePods(NODE, "cluster.local", lambda: None)
    pods.set_namespaces(store(ns("apps", ENROLLED), ns("plain", {})))
    a = pod("a", "u1")
    b = pod("b", "u2", ip="10.1.0.6")
    b["metadata"]["annotations"] = {REDIRECTION_ANNOTATION: "enabled"}
    c = pod("c", "u3", ns="plain", ip="10.1.0.7")
    c["metadata"]["annotations"] = {REDIRECTION_ANNOTATION: "pending"}
    d = pod("d", "u4", ip="10.1.0.8")
    d["metadata"]["annotations"] = {REDIRECTION_ANNOTATION: "pending"}
    raw = store(a, b, c, d)
    pods.set_pods(raw)
    got = annotation_changes(
        {k: v for k, v in raw.items()},  # type: ignore[misc]
        pods.workloads,
        lambda uid: uid in ("u1", "u4"),
    )
    assert got == [
        ("apps", "a", "enabled"),  # redirected, no annotation yet
        ("apps", "b", "pending"),  # was enabled, not redirected now
        ("apps", "d", "enabled"),
        ("plain", "c", None),  # not enrolled: the annotation goes
    ]
