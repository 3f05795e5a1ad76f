"""Builders for ztunnel unit tests."""

from __future__ import annotations

import ipaddress

from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Endpoint, Service, ServicePort, Workload


def workload(
    name: str, ip: str, *, enrolled: bool = True, ns: str = "default", sa: str | None = None,
    node: str = "node-1",
) -> Workload:
    return Workload(
        uid=PodUid(f"uid-{name}"),
        name=name,
        namespace=ns,
        service_account=sa or name,
        identity=SpiffeId("cluster.local", ns, sa or name),
        node=NodeName(node),
        ip=ipaddress.IPv4Address(ip),
        enrolled=enrolled,
        labels=(("app", name),),
    )


def service(name: str, vip: str, ports: list[tuple[int, int]], endpoints: list[Workload],
            ns: str = "default") -> Service:
    return Service(
        namespace=ns,
        name=name,
        vip=ipaddress.IPv4Address(vip),
        ports=tuple(ServicePort(p, t) for p, t in ports),
        endpoints=tuple(Endpoint(w.uid, w.ip) for w in endpoints),
    )
