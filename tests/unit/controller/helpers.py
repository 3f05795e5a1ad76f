"""Builders for Kubernetes-shaped test objects."""

from __future__ import annotations

from typing import Any


def pod(
    name: str = "web-1",
    ns: str = "default",
    *,
    node: str | None = "node-1",
    ip: str | None = "10.78.1.2",
    sa: str | None = "web",
    labels: dict[str, str] | None = None,
    uid: str | None = None,
    ports: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {"app": "web"}}
    if uid:
        meta["uid"] = uid
    if annotations:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": [{"name": "app", "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    if sa:
        spec["serviceAccountName"] = sa
    out: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    if ip:
        out["status"] = {"podIP": ip}
    return out


def service(
    name: str = "web",
    ns: str = "default",
    *,
    vip: str | None = "10.96.0.10",
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"app": "web"} if selector is None else selector,
        "ports": [{"port": 80, "targetPort": 8080, "name": "http"}] if ports is None else ports,
    }
    if vip is not None:
        spec["clusterIP"] = vip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}},
    }
