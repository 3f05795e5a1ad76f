"""Constants and map layouts shared with the C programs in ``bpf/`` (``bpf/lib/consts.h`` and
``bpf/lib/maps.h``), and the packing of map keys and values.

Invariants: every ``NM_*`` value here equals the ``#define`` of the same name in
``bpf/lib/consts.h`` and every struct format matches the C struct field by field
(tests/unit/node_agent/test_ebpf_consts.py checks both). This module is pure: no ``bcc``, no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

from meshapi.constants import (
    INBOUND_HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_CAPTURE_PORT,
    ZTUNNEL_SOCKET_MARK,
)

NM_OUTBOUND_PORT: Final = OUTBOUND_CAPTURE_PORT
NM_INBOUND_PORT: Final = INBOUND_PLAINTEXT_PORT
NM_HBONE_PORT: Final = INBOUND_HBONE_PORT
NM_ZTUNNEL_MARK: Final = ZTUNNEL_SOCKET_MARK
NM_SO_ORIGINAL_DST: Final = 80
NM_SOL_IP: Final = 0
NM_LOOPBACK_IFINDEX: Final = 1
NM_MAX_PODS: Final = 4096
NM_MAX_LISTENERS: Final = 8192
NM_MAX_FLOWS: Final = 65536
NM_POD_HOST_PROBE: Final = 0x1

#: the ``#define``s of bpf/lib/consts.h, by name (what the consistency test compares)
C_DEFINES: Final[dict[str, int]] = {
    "NM_OUTBOUND_PORT": NM_OUTBOUND_PORT,
    "NM_INBOUND_PORT": NM_INBOUND_PORT,
    "NM_HBONE_PORT": NM_HBONE_PORT,
    "NM_ZTUNNEL_MARK": NM_ZTUNNEL_MARK,
    "NM_SO_ORIGINAL_DST": NM_SO_ORIGINAL_DST,
    "NM_SOL_IP": NM_SOL_IP,
    "NM_LOOPBACK_IFINDEX": NM_LOOPBACK_IFINDEX,
    "NM_MAX_PODS": NM_MAX_PODS,
    "NM_MAX_LISTENERS": NM_MAX_LISTENERS,
    "NM_MAX_FLOWS": NM_MAX_FLOWS,
    "NM_POD_HOST_PROBE": NM_POD_HOST_PROBE,
}

#: map names (also their pin file names under ``<pin dir>/maps/``)
MAP_PODS: Final = "nm_pods"
MAP_POD_IPS: Final = "nm_pod_ips"
MAP_PENDING: Final = "nm_pending"
MAP_FLOWS: Final = "nm_flows"
MAP_LISTENERS: Final = "nm_listeners"
MAP_HOPS: Final = "nm_hops"
MAP_HOP_TCP: Final = "nm_hop_tcp"
MAPS: Final = (MAP_PODS, MAP_POD_IPS, MAP_PENDING, MAP_FLOWS, MAP_LISTENERS, MAP_HOPS, MAP_HOP_TCP)

#: C struct → (field names in order, struct format); native byte order, as the kernel sees them.
#: ``ip`` fields are in network byte order inside the integer (packed as 4 raw bytes).
STRUCTS: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "pod_info": (("ip", "host_probe", "flags", "pad"), "=4s4sII"),
    "orig_dst": (("ip", "port"), "=4sI"),
    "flow_key": (("netns", "ip", "port"), "=Q4sI"),
    "listener_key": (("netns", "port", "pad"), "=QII"),
    "hop_key": (("netns", "local_ip", "remote_ip", "local_port", "remote_port"), "=Q4s4sII"),
}

NETNS_KEY: Final = struct.Struct("=Q")
IP_KEY: Final = struct.Struct("=4s")
SOCKET_VALUE: Final = struct.Struct("=Q")  # what a sockhash takes from user space: a socket fd


@dataclass(frozen=True, slots=True)
class PodInfo:
    """Value of ``nm_pods``: an enrolled pod."""

    ip: ipaddress.IPv4Address
    host_probe: ipaddress.IPv4Address | None = None

    def pack(self) -> bytes:
        probe = self.host_probe.packed if self.host_probe is not None else bytes(4)
        flags = NM_POD_HOST_PROBE if self.host_probe is not None else 0
        return struct.pack(STRUCTS["pod_info"][1], self.ip.packed, probe, flags, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> PodInfo:
        ip, probe, flags, _ = struct.unpack(STRUCTS["pod_info"][1], raw)
        return cls(
            ipaddress.IPv4Address(ip),
            ipaddress.IPv4Address(probe) if flags & NM_POD_HOST_PROBE else None,
        )


@dataclass(frozen=True, slots=True)
class OrigDst:
    """Value of ``nm_pending`` and ``nm_flows``: where the app was connecting."""

    ip: ipaddress.IPv4Address
    port: int

    def pack(self) -> bytes:
        return struct.pack(STRUCTS["orig_dst"][1], self.ip.packed, self.port)

    @classmethod
    def unpack(cls, raw: bytes) -> OrigDst:
        ip, port = struct.unpack(STRUCTS["orig_dst"][1], raw)
        return cls(ipaddress.IPv4Address(ip), port)

    def sockaddr_in(self) -> bytes:
        """What getsockopt(SO_ORIGINAL_DST) returns for this destination (16 bytes)."""
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", self.port) + self.ip.packed \
            + bytes(8)


@dataclass(frozen=True, slots=True)
class FlowKey:
    """Key of ``nm_flows``: the app side of a captured connection."""

    netns: int
    ip: ipaddress.IPv4Address
    port: int

    def pack(self) -> bytes:
        return struct.pack(STRUCTS["flow_key"][1], self.netns, self.ip.packed, self.port)

    @classmethod
    def unpack(cls, raw: bytes) -> FlowKey:
        netns, ip, port = struct.unpack(STRUCTS["flow_key"][1], raw)
        return cls(netns, ipaddress.IPv4Address(ip), port)


@dataclass(frozen=True, slots=True)
class ListenerKey:
    """Key of ``nm_listeners``: one of the ztunnel's inbound listeners of a pod."""

    netns: int
    port: int

    def pack(self) -> bytes:
        return struct.pack(STRUCTS["listener_key"][1], self.netns, self.port, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> ListenerKey:
        netns, port, _ = struct.unpack(STRUCTS["listener_key"][1], raw)
        return cls(netns, port)


@dataclass(frozen=True, slots=True)
class HopKey:
    """Key of ``nm_hops`` and ``nm_hop_tcp``: one end of an app <-> ztunnel hop in a pod."""

    netns: int
    local_ip: ipaddress.IPv4Address
    local_port: int
    remote_ip: ipaddress.IPv4Address
    remote_port: int

    def pack(self) -> bytes:
        return struct.pack(
            STRUCTS["hop_key"][1], self.netns, self.local_ip.packed, self.remote_ip.packed,
            self.local_port, self.remote_port,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> HopKey:
        netns, lip, rip, lport, rport = struct.unpack(STRUCTS["hop_key"][1], raw)
        return cls(netns, ipaddress.IPv4Address(lip), lport, ipaddress.IPv4Address(rip), rport)

    def peer(self) -> HopKey:
        return HopKey(self.netns, self.remote_ip, self.remote_port, self.local_ip, self.local_port)


def netns_key(cookie: int) -> bytes:
    return NETNS_KEY.pack(cookie)


def ip_key(ip: ipaddress.IPv4Address) -> bytes:
    return IP_KEY.pack(ip.packed)
