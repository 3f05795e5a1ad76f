"""The local cluster's topology and every name and address derived from it (pure, no I/O).

Invariants (docs/CONTRACTS.md, "Local cluster layout"):

* node ``i`` (1-based) is ``node-i``: netns ``nm-node-i``, host veth ``nm-h<i>`` on ``nm-br0``,
  ``eth0`` 10.77.0.(10+i)/24, pod bridge ``nm-cbr0`` 10.78.i.1/24, pod CIDR 10.78.i.0/24;
* a pod is netns ``nm-pod-<namespace>-<name>``; its node-side veth is ``nm-v<index>`` with a
  cluster-wide 1-based index; its ``eth0`` is 10.78.i.(2+ordinal on its node)/24;
* interface names fit IFNAMSIZ (15 characters), which ``build`` checks for every name;
* the default pods are fixed by the demo and the tests: ``client`` and ``server-2`` on node-1,
  ``server-1`` and ``outsider`` on node-2; ``--pods-per-node`` adds ``app-<node>-<k>`` pods.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NotRequired, TypedDict

from meshapi.constants import (
    CONTROLLER_API_PORT,
    CONTROLLER_METRICS_PORT,
    ENROLLMENT_ENABLED,
    ENROLLMENT_LABEL,
    NODE_METRICS_PORT,
    NODE_READINESS_PORT,
)
from meshapi.enrollment import is_enrolled
from meshapi.ids import NodeName, PodUid
from meshctl.errors import TopologyError

HOST_BRIDGE: Final = "nm-br0"
HOST_BRIDGE_IP: Final = ipaddress.IPv4Address("10.77.0.1")
NODE_NETWORK: Final = ipaddress.IPv4Network("10.77.0.0/24")
POD_BRIDGE: Final = "nm-cbr0"
SERVICE_NETWORK: Final = ipaddress.IPv4Network("10.96.0.0/24")
NETNS_PREFIX: Final = "nm-"
IFNAMSIZ: Final = 15
CGROUP_SUBTREE: Final = "nodemesh"
SAMPLE_APP_PORT: Final = 8080
MAX_NODES: Final = 200
MAX_PODS_PER_NODE: Final = 200
CONTROLLER_API: Final = f"{HOST_BRIDGE_IP}:{CONTROLLER_API_PORT}"
CONTROLLER_METRICS: Final = f"{HOST_BRIDGE_IP}:{CONTROLLER_METRICS_PORT}"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Node:
    index: int

    @property
    def name(self) -> NodeName:
        return NodeName(f"node-{self.index}")

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}node-{self.index}"

    @property
    def host_veth(self) -> str:
        return f"{NETNS_PREFIX}h{self.index}"

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return NODE_NETWORK.network_address + 10 + self.index

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.78.{self.index}.0/24")

    @property
    def pod_gateway(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address + 1

    @property
    def metrics(self) -> str:
        return f"{self.ip}:{NODE_METRICS_PORT}"

    @property
    def readiness(self) -> str:
        return f"{self.ip}:{NODE_READINESS_PORT}"


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class Pod:
    uid: PodUid
    name: str
    namespace: str
    service_account: str
    node: Node
    #: position among the pods of its node (0-based): the pod's IP is 10.78.i.(2+ordinal)
    ordinal: int
    #: cluster-wide 1-based index: the node-side veth is ``nm-v<veth_index>``
    veth_index: int
    labels: Labels = ()
    #: the sample app's port, or None for a pod that only sleeps ("pause")
    app_port: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}pod-{self.namespace}-{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def veth(self) -> str:
        return f"{NETNS_PREFIX}v{self.veth_index}"

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.node.pod_cidr.network_address + 2 + self.ordinal

    def cgroup(self, cgroup2_mount: str) -> str:
        return f"{cgroup2_mount}/{CGROUP_SUBTREE}/{self.node.name}/{self.uid}"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    cluster_ip: ipaddress.IPv4Address
    port: int
    port_name: str
    target_port: int
    selector: Labels


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    services: tuple[Service, ...]

    def namespace(self, name: str) -> Namespace:
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        raise TopologyError(f"namespace {name!r} is not part of the local topology")

    def enrolled(self, pod: Pod) -> bool:
        return is_enrolled(dict(pod.labels), dict(self.namespace(pod.namespace).labels))

    def pods_on(self, node: Node) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def service_accounts(self) -> tuple[tuple[str, str], ...]:
        """(namespace, name) of every service account the pods use, in first-use order."""
        seen: dict[tuple[str, str], None] = {}
        for pod in self.pods:
            seen[(pod.namespace, pod.service_account)] = None
        return tuple(seen)

    def interface_names(self) -> tuple[str, ...]:
        names = [HOST_BRIDGE, POD_BRIDGE, "eth0"]
        names += [n.host_veth for n in self.nodes]
        names += [p.veth for p in self.pods]
        return tuple(names)


def new_uid() -> PodUid:
    import uuid

    return PodUid(str(uuid.uuid4()))


_APP_LABELS: Final[Labels] = (("app", "server"),)


def default_services() -> tuple[Service, ...]:
    return (
        Service(
            name="server",
            namespace="default",
            cluster_ip=SERVICE_NETWORK.network_address + 10,
            port=80,
            port_name="http",
            target_port=SAMPLE_APP_PORT,
            selector=_APP_LABELS,
        ),
    )


def build(
    nodes: int = 2, pods_per_node: int = 0, uid_factory: Callable[[], PodUid] = new_uid
) -> Topology:
    """The default topology with ``nodes`` nodes and ``pods_per_node`` extra app pods per node."""
    if not 2 <= nodes <= MAX_NODES:
        raise TopologyError(f"--nodes must be between 2 and {MAX_NODES}, got {nodes}")
    if not 0 <= pods_per_node <= MAX_PODS_PER_NODE:
        raise TopologyError(
            f"--pods-per-node must be between 0 and {MAX_PODS_PER_NODE}, got {pods_per_node}"
        )
    node_list = tuple(Node(i) for i in range(1, nodes + 1))
    n1, n2 = node_list[0], node_list[1]
    enrolled = ((ENROLLMENT_LABEL, ENROLLMENT_ENABLED),)
    namespaces = (Namespace("default", enrolled), Namespace("legacy"))

    # (name, namespace, service account, node, labels, app port)
    specs: list[tuple[str, str, str, Node, Labels, int | None]] = [
        ("client", "default", "client", n1, (), None),
        ("server-1", "default", "server", n2, _APP_LABELS, SAMPLE_APP_PORT),
        ("server-2", "default", "server", n1, _APP_LABELS, SAMPLE_APP_PORT),
        ("outsider", "legacy", "default", n2, (), None),
    ]
    for node in node_list:
        for k in range(1, pods_per_node + 1):
            specs.append(
                (f"app-{node.name}-{k}", "default", "app", node, (("app", "app"),), SAMPLE_APP_PORT)
            )

    ordinals: dict[Node, int] = {}
    pods: list[Pod] = []
    for veth_index, (name, ns, sa, node, labels, port) in enumerate(specs, start=1):
        ordinal = ordinals.get(node, 0)
        ordinals[node] = ordinal + 1
        pods.append(Pod(uid_factory(), name, ns, sa, node, ordinal, veth_index, labels, port))

    topo = Topology(node_list, namespaces, tuple(pods), default_services())
    for ifname in topo.interface_names():
        if len(ifname) > IFNAMSIZ:
            raise TopologyError(f"interface name {ifname!r} is longer than {IFNAMSIZ} characters")
    return topo


# --- cluster.json: the topology as `up` built it, read back by `exec`, `pods` and `down` ---------


class PodRecord(TypedDict):
    uid: str
    name: str
    namespace: str
    serviceAccount: str
    node: int
    ordinal: int
    vethIndex: int
    labels: dict[str, str]
    appPort: int | None


class ClusterRecord(TypedDict):
    version: int
    nodes: int
    namespaces: dict[str, dict[str, str]]
    pods: list[PodRecord]
    cgroupRoot: NotRequired[str]


def to_record(topo: Topology, cgroup2_mount: str) -> ClusterRecord:
    return {
        "version": 1,
        "nodes": len(topo.nodes),
        "namespaces": {ns.name: dict(ns.labels) for ns in topo.namespaces},
        "pods": [
            {
                "uid": p.uid,
                "name": p.name,
                "namespace": p.namespace,
                "serviceAccount": p.service_account,
                "node": p.node.index,
                "ordinal": p.ordinal,
                "vethIndex": p.veth_index,
                "labels": dict(p.labels),
                "appPort": p.app_port,
            }
            for p in topo.pods
        ],
        "cgroupRoot": cgroup2_mount,
    }


def from_json(text: str, source: str) -> Topology:
    """Parse ``cluster.json``; raises TopologyError naming ``source`` and the field."""
    try:
        raw = json.loads(text)
        nodes = tuple(Node(i) for i in range(1, int(raw["nodes"]) + 1))
        namespaces = tuple(
            Namespace(name, tuple(sorted(labels.items())))
            for name, labels in dict(raw["namespaces"]).items()
        )
        pods = tuple(
            Pod(
                uid=PodUid(str(p["uid"])),
                name=str(p["name"]),
                namespace=str(p["namespace"]),
                service_account=str(p["serviceAccount"]),
                node=nodes[int(p["node"]) - 1],
                ordinal=int(p["ordinal"]),
                veth_index=int(p["vethIndex"]),
                labels=tuple(sorted(dict(p["labels"]).items())),
                app_port=None if p["appPort"] is None else int(p["appPort"]),
            )
            for p in raw["pods"]
        )
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise TopologyError(
            f"{source} is not a valid cluster record ({exc!r}); "
            "run `meshctl local down` and `meshctl local up` again"
        ) from exc
    return Topology(nodes, namespaces, pods, default_services())
