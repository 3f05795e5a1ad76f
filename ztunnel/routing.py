"""Where an outbound connection goes: a pure decision from the discovery view (STYLE.md 3).

:func:`decide` takes the source pod, the original destination and an index of the mesh
(:class:`MeshIndex`, rebuilt from :class:`meshapi.discovery.DiscoveryState` on each change) and
returns one of :class:`ViaHbone`, :class:`Passthrough` or :class:`Refuse`. No I/O; the endpoint
choice is injected (``pick(n) -> index``) so tests are deterministic.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from meshapi.constants import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_CAPTURE_PORT
from meshapi.model import Service, Workload

ZTUNNEL_PORTS = frozenset({OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT})
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class MeshIndex:
    """Lookups the data path needs, built once per discovery change."""

    by_ip: Mapping[ipaddress.IPv4Address, Workload] = field(default_factory=dict)
    by_uid: Mapping[str, Workload] = field(default_factory=dict)
    by_vip: Mapping[ipaddress.IPv4Address, Service] = field(default_factory=dict)

    @classmethod
    def build(cls, workloads: Mapping[str, Workload], services: Mapping[str, Service]) -> MeshIndex:
        return cls(
            by_ip={w.ip: w for w in workloads.values()},
            by_uid=dict(workloads),
            by_vip={s.vip: s for s in services.values() if s.vip is not None},
        )


@dataclass(frozen=True, slots=True)
class ViaHbone:
    """Tunnel to an enrolled workload: ``peer`` is its ``ip:15008``, ``target`` the app."""

    workload: Workload
    target: tuple[str, int]
    service: Service | None = None

    @property
    def peer(self) -> tuple[str, int]:
        return (self.target[0], INBOUND_HBONE_PORT)

    @property
    def authority(self) -> str:
        return f"{self.target[0]}:{self.target[1]}"


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Plain TCP from the source pod's netns (unenrolled pod or outside the mesh)."""

    target: tuple[str, int]
    workload: Workload | None = None
    service: Service | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str  # short, metric-label friendly: "loop", "no_endpoints", "unknown_service_port"
    detail: str = ""


Decision = ViaHbone | Passthrough | Refuse


def decide(
    index: MeshIndex,
    source: Workload,
    dst: tuple[str, int],
    pick: Callable[[int], int],
) -> Decision:
    ip_str, port = dst
    try:
        ip = ipaddress.IPv4Address(ip_str)
    except ValueError:
        return Refuse("bad_destination", f"{ip_str!r} is not an IPv4 address")
    if port in ZTUNNEL_PORTS and (ip == source.ip or ip in _LOOPBACK):
        return Refuse("loop", f"{ip}:{port} is the ztunnel's own listener in this pod")
    service = index.by_vip.get(ip)
    if service is not None:
        sp = service.port(port)
        if sp is None:
            return Refuse(
                "unknown_service_port", f"service {service.key} has no port {port}"
            )
        if not service.endpoints:
            return Refuse("no_endpoints", f"service {service.key} has no ready endpoints")
        n = len(service.endpoints)
        endpoint = service.endpoints[pick(n) % n]
        target = (str(endpoint.ip), sp.target_port)
        workload = index.by_uid.get(endpoint.uid) or index.by_ip.get(endpoint.ip)
        if workload is not None and workload.enrolled:
            return ViaHbone(workload, target, service)
        return Passthrough(target, workload, service)
    workload = index.by_ip.get(ip)
    if workload is not None and workload.enrolled:
        return ViaHbone(workload, (ip_str, port))
    return Passthrough((ip_str, port), workload)


class RoundRobin:
    """``pick`` for :func:`decide`: a process-wide rotating counter (cheap, fair enough)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self, n: int) -> int:
        return next(self._counter) % n
