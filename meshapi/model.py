"""The mesh model every node component works from: workloads (pods) and services.

Built by the controller from Kubernetes-shaped objects; shipped to nodes over the discovery
stream with ``to_wire``/``from_wire``. All types are frozen; labels are sorted tuples so the
objects hash and compare by value (the controller diffs snapshots with ``==``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from meshapi import wire
from meshapi.errors import IdentityError, WireError
from meshapi.ids import NodeName, PodUid, ServiceKey, SpiffeId, is_dns_label


class WorkloadWire(TypedDict, total=False):
    uid: str
    name: str
    namespace: str
    serviceAccount: str
    identity: str
    node: str
    ip: str
    enrolled: bool
    labels: dict[str, str]
    netns: str


@dataclass(frozen=True, slots=True)
class Workload:
    """One pod as the mesh sees it."""

    uid: PodUid
    name: str
    namespace: str
    service_account: str
    identity: SpiffeId
    node: NodeName
    ip: ipaddress.IPv4Address
    enrolled: bool
    labels: tuple[tuple[str, str], ...] = ()
    #: local mode only: path of the pod's netns file (see constants.LOCAL_NETNS_ANNOTATION)
    netns: str | None = None

    @property
    def key(self) -> str:
        return str(self.uid)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def to_wire(self) -> WorkloadWire:
        out: WorkloadWire = {
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "identity": str(self.identity),
            "node": self.node,
            "ip": str(self.ip),
            "enrolled": self.enrolled,
            "labels": dict(self.labels),
        }
        if self.netns is not None:
            out["netns"] = self.netns
        return out

    @classmethod
    def from_wire(cls, value: object, path: str = "workload") -> Workload:
        obj = wire.as_mapping(value, path)
        identity_str = wire.req_str(obj, "identity", path)
        try:
            identity = SpiffeId.parse(identity_str)
        except IdentityError as exc:
            raise WireError(wire.join(path, "identity"), str(exc)) from exc
        namespace = wire.req_str(obj, "namespace", path)
        if not is_dns_label(namespace):
            raise WireError(wire.join(path, "namespace"), f"{namespace!r} is not a DNS label")
        netns = wire.opt_str(obj, "netns", path) or None
        return cls(
            uid=PodUid(wire.req_str(obj, "uid", path)),
            name=wire.req_str(obj, "name", path),
            namespace=namespace,
            service_account=wire.req_str(obj, "serviceAccount", path),
            identity=identity,
            node=NodeName(wire.req_str(obj, "node", path)),
            ip=wire.ipv4(obj.get("ip"), wire.join(path, "ip")),
            enrolled=wire.opt_bool(obj, "enrolled", path, False),
            labels=wire.frozen_labels(wire.str_map(obj.get("labels"), wire.join(path, "labels"))),
            netns=netns,
        )


class ServicePortWire(TypedDict, total=False):
    name: str
    port: int
    targetPort: int
    appProtocol: str


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int
    name: str = ""
    app_protocol: str = ""

    @property
    def is_http(self) -> bool:
        """DESIGN.md "L7": declared HTTP by appProtocol or an ``http``/``http-*`` port name."""
        if self.app_protocol:
            return self.app_protocol.lower() in ("http", "http2", "h2c", "kubernetes.io/h2c")
        return self.name == "http" or self.name.startswith("http-")

    def to_wire(self) -> ServicePortWire:
        out: ServicePortWire = {"port": self.port, "targetPort": self.target_port}
        if self.name:
            out["name"] = self.name
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out

    @classmethod
    def from_wire(cls, value: object, path: str) -> ServicePort:
        obj = wire.as_mapping(value, path)
        return cls(
            port=wire.req_int(obj, "port", path, 1, 65535),
            target_port=wire.req_int(obj, "targetPort", path, 1, 65535),
            name=wire.opt_str(obj, "name", path),
            app_protocol=wire.opt_str(obj, "appProtocol", path),
        )


class EndpointWire(TypedDict):
    uid: str
    ip: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ready backend of a service: the workload and its IP (ports come from ServicePort)."""

    uid: PodUid
    ip: ipaddress.IPv4Address

    def to_wire(self) -> EndpointWire:
        return {"uid": self.uid, "ip": str(self.ip)}

    @classmethod
    def from_wire(cls, value: object, path: str) -> Endpoint:
        obj = wire.as_mapping(value, path)
        return cls(
            uid=PodUid(wire.req_str(obj, "uid", path)),
            ip=wire.ipv4(obj.get("ip"), wire.join(path, "ip")),
        )


class ServiceWire(TypedDict, total=False):
    namespace: str
    name: str
    vip: str
    ports: list[ServicePortWire]
    endpoints: list[EndpointWire]


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    vip: ipaddress.IPv4Address | None
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = field(default=())

    @property
    def key(self) -> str:
        return str(ServiceKey(self.namespace, self.name))

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None

    def to_wire(self) -> ServiceWire:
        out: ServiceWire = {
            "namespace": self.namespace,
            "name": self.name,
            "ports": [p.to_wire() for p in self.ports],
            "endpoints": [e.to_wire() for e in self.endpoints],
        }
        if self.vip is not None:
            out["vip"] = str(self.vip)
        return out

    @classmethod
    def from_wire(cls, value: object, path: str = "service") -> Service:
        obj = wire.as_mapping(value, path)
        vip_raw = obj.get("vip")
        ports = wire.as_list(obj.get("ports", []), wire.join(path, "ports"))
        endpoints = wire.as_list(obj.get("endpoints", []), wire.join(path, "endpoints"))
        return cls(
            namespace=wire.req_str(obj, "namespace", path),
            name=wire.req_str(obj, "name", path),
            vip=None if vip_raw is None else wire.ipv4(vip_raw, wire.join(path, "vip")),
            ports=tuple(
                ServicePort.from_wire(p, wire.join(wire.join(path, "ports"), i))
                for i, p in enumerate(ports)
            ),
            endpoints=tuple(
                Endpoint.from_wire(e, wire.join(wire.join(path, "endpoints"), i))
                for i, e in enumerate(endpoints)
            ),
        )


def workloads_by_ip(workloads: Mapping[str, Workload]) -> dict[ipaddress.IPv4Address, Workload]:
    return {w.ip: w for w in workloads.values()}


def services_by_vip(services: Mapping[str, Service]) -> dict[ipaddress.IPv4Address, Service]:
    return {s.vip: s for s in services.values() if s.vip is not None}
