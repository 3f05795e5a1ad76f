"""The network of a local cluster as a list of operations (pure, table-tested).

:func:`plan` turns a topology into the ordered operations that build it; the only code that
performs them is :mod:`meshctl.local.netlink`. ``netns=None`` means the host namespace.
The host gets a bridge, its address and routes to the pod CIDRs over that bridge: no forwarding,
no firewall change. Each node netns forwards between its ``eth0`` and its pod bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshctl.local.topology import HOST_BRIDGE, HOST_BRIDGE_IP, NODE_NETWORK, POD_BRIDGE, Topology


@dataclass(frozen=True, slots=True)
class AddNetns:
    name: str


@dataclass(frozen=True, slots=True)
class AddBridge:
    netns: str | None
    name: str


@dataclass(frozen=True, slots=True)
class AddVeth:
    """A veth pair created directly in its two namespaces (never renamed in the host ns)."""

    name: str
    netns: str | None
    peer: str
    peer_netns: str


@dataclass(frozen=True, slots=True)
class SetMaster:
    netns: str | None
    dev: str
    master: str


@dataclass(frozen=True, slots=True)
class AddAddress:
    netns: str | None
    dev: str
    cidr: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    netns: str | None
    dev: str


@dataclass(frozen=True, slots=True)
class AddRoute:
    netns: str | None
    dst: str
    via: str


@dataclass(frozen=True, slots=True)
class Sysctl:
    netns: str
    key: str
    value: str


Op = AddNetns | AddBridge | AddVeth | SetMaster | AddAddress | LinkUp | AddRoute | Sysctl


def plan(topo: Topology) -> list[Op]:
    prefix = NODE_NETWORK.prefixlen
    ops: list[Op] = [
        AddBridge(None, HOST_BRIDGE),
        AddAddress(None, HOST_BRIDGE, f"{HOST_BRIDGE_IP}/{prefix}"),
        LinkUp(None, HOST_BRIDGE),
    ]
    for node in topo.nodes:
        ns = node.netns
        ops += [
            AddNetns(ns),
            LinkUp(ns, "lo"),
            AddVeth(node.host_veth, None, "eth0", ns),
            SetMaster(None, node.host_veth, HOST_BRIDGE),
            LinkUp(None, node.host_veth),
            AddAddress(ns, "eth0", f"{node.ip}/{prefix}"),
            LinkUp(ns, "eth0"),
            AddBridge(ns, POD_BRIDGE),
            AddAddress(ns, POD_BRIDGE, f"{node.pod_gateway}/{node.pod_cidr.prefixlen}"),
            LinkUp(ns, POD_BRIDGE),
            Sysctl(ns, "net.ipv4.ip_forward", "1"),
        ]
        ops += [
            AddRoute(ns, str(other.pod_cidr), str(other.ip))
            for other in topo.nodes
            if other != node
        ]
        ops.append(AddRoute(None, str(node.pod_cidr), str(node.ip)))
    for pod in topo.pods:
        node = pod.node
        ops += [
            AddNetns(pod.netns),
            LinkUp(pod.netns, "lo"),
            AddVeth(pod.veth, node.netns, "eth0", pod.netns),
            SetMaster(node.netns, pod.veth, POD_BRIDGE),
            LinkUp(node.netns, pod.veth),
            AddAddress(pod.netns, "eth0", f"{pod.ip}/{node.pod_cidr.prefixlen}"),
            LinkUp(pod.netns, "eth0"),
            AddRoute(pod.netns, "default", str(node.pod_gateway)),
        ]
    return ops
