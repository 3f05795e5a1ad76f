"""The Kubernetes-shaped objects of the local topology (pure).

These are what ``up`` writes into the controller's watched config dir, one object per file named
by :func:`filename`. Raw objects are ``TypedDict``s (STYLE 1); nothing here does I/O.
"""

from __future__ import annotations

from typing import Final, NotRequired, TypedDict

from meshapi.constants import LOCAL_NETNS_ANNOTATION
from meshctl.local.topology import Pod, Service, Topology

#: kinds without a namespace: their file is ``<kind>.<name>.yaml``
CLUSTER_SCOPED_KINDS: Final = frozenset({"Namespace"})


class Metadata(TypedDict):
    name: str
    namespace: NotRequired[str]
    uid: NotRequired[str]
    labels: NotRequired[dict[str, str]]
    annotations: NotRequired[dict[str, str]]


class ContainerPort(TypedDict):
    containerPort: int
    name: str
    protocol: str


class Container(TypedDict):
    name: str
    image: str
    ports: list[ContainerPort]


class PodSpec(TypedDict):
    nodeName: str
    serviceAccountName: str
    containers: list[Container]


class PodStatus(TypedDict):
    podIP: str
    phase: str


class ServicePort(TypedDict):
    name: str
    port: int
    targetPort: int
    protocol: str


class ServiceSpec(TypedDict):
    clusterIP: str
    selector: dict[str, str]
    ports: list[ServicePort]


class KubeObject(TypedDict):
    apiVersion: str
    kind: str
    metadata: Metadata
    spec: NotRequired[PodSpec | ServiceSpec]
    status: NotRequired[PodStatus]


def filename(kind: str, namespace: str | None, name: str) -> str:
    """``<kind>.<namespace>.<name>.yaml`` (cluster-scoped: ``<kind>.<name>.yaml``)."""
    if kind in CLUSTER_SCOPED_KINDS or namespace is None:
        return f"{kind.lower()}.{name}.yaml"
    return f"{kind.lower()}.{namespace}.{name}.yaml"


def object_filename(obj: KubeObject) -> str:
    meta = obj["metadata"]
    return filename(obj["kind"], meta.get("namespace"), meta["name"])


def pod_object(pod: Pod) -> KubeObject:
    ports: list[ContainerPort] = []
    if pod.app_port is not None:
        ports.append({"containerPort": pod.app_port, "name": "http", "protocol": "TCP"})
    meta: Metadata = {
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
        "labels": dict(pod.labels),
        "annotations": {LOCAL_NETNS_ANNOTATION: pod.netns_path},
    }
    spec: PodSpec = {
        "nodeName": pod.node.name,
        "serviceAccountName": pod.service_account,
        "containers": [
            {
                "name": "app" if pod.app_port is not None else "pause",
                "image": "meshctl-sampleapp" if pod.app_port is not None else "pause",
                "ports": ports,
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {"podIP": str(pod.ip), "phase": "Running"},
    }


def service_object(svc: Service) -> KubeObject:
    spec: ServiceSpec = {
        "clusterIP": str(svc.cluster_ip),
        "selector": dict(svc.selector),
        "ports": [
            {
                "name": svc.port_name,
                "port": svc.port,
                "targetPort": svc.target_port,
                "protocol": "TCP",
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": spec,
    }


def topology_objects(topo: Topology) -> list[KubeObject]:
    """Namespaces, ServiceAccounts, Pods and Services of ``topo``, in that order."""
    out: list[KubeObject] = []
    for ns in topo.namespaces:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": dict(ns.labels)},
            }
        )
    for namespace, sa in topo.service_accounts():
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": namespace},
            }
        )
    out.extend(pod_object(p) for p in topo.pods)
    out.extend(service_object(s) for s in topo.services)
    return out
