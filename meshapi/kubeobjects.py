"""The Kubernetes objects the mesh reads, as they are on the wire (``TypedDict`` s, the edge):
the parts of Pods and Namespaces that the controller's translation and the node agent's pod
watch both use. Stdlib only; validation happens where they are read."""

from __future__ import annotations

from typing import TypedDict


class MetadataRaw(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    deletionTimestamp: str
    ownerReferences: list[dict[str, object]]


class ContainerPortRaw(TypedDict, total=False):
    name: str
    containerPort: int
    protocol: str


class ContainerRaw(TypedDict, total=False):
    name: str
    ports: list[ContainerPortRaw]


class PodSpecRaw(TypedDict, total=False):
    nodeName: str
    serviceAccountName: str
    hostNetwork: bool
    containers: list[ContainerRaw]


class PodStatusRaw(TypedDict, total=False):
    phase: str
    podIP: str


class PodRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataRaw
    spec: PodSpecRaw
    status: PodStatusRaw


class NamespaceRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataRaw
