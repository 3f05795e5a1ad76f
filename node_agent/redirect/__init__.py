"""Traffic redirection inside pod network namespaces.

:class:`Redirector` is what the rest of the agent sees; ``redirect.iptables`` is the real
implementation for the ``iptables`` mode (the only module importing ``iptc``), ``redirect.ebpf`` for
the ``ebpf`` mode (the only package importing ``bcc``), and tests use a fake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol

from node_agent.redirect.plan import Plan


class Redirector(Protocol):
    """Installs, reads and removes one pod's redirection. Every method is idempotent and enters
    the pod's netns only in a worker thread, never on the event loop."""

    mode: str

    async def apply(self, netns_path: str, plan: Plan, pod_ip: ipaddress.IPv4Address) -> bool:
        """Make the pod's redirection equal ``plan``; True if anything had to change."""
        ...

    async def read(self, netns_path: str) -> Plan:
        """Our rules currently in the netns (``plan.EMPTY`` when there are none)."""
        ...

    async def remove(self, netns_path: str) -> bool:
        """Delete our jumps and chains, nothing else; True if anything was there."""
        ...

    async def collect(self, live_netns: Iterable[str]) -> int:
        """Drop state kept outside pod netns (eBPF maps, pins) of every netns not in
        ``live_netns``; how many pods' state went. iptables keeps none: always 0."""
        ...
