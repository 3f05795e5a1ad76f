"""A node that moves from the ``iptables`` mode to ``ebpf`` (a new ``--redirect-mode``, or
``auto`` finding eBPF usable after a kernel or header upgrade): the pods redirected before keep
the old agent's NAT rules in their netns, and both mechanisms would capture the same traffic.
:class:`DropIptablesLeftovers` wraps the eBPF redirector and deletes those rules the first time
it touches each pod. (The other way round, ``node_agent.app`` removes the node's eBPF pins when
it starts in iptables mode.)

Invariants: a pod's rules are looked for once per agent life and netns; a netns without a legacy
``nat`` table is not given one (``iptables.remove_leftovers``); failing to look is logged, never
fatal (the eBPF redirection itself does not depend on it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable

from node_agent.errors import AgentError
from node_agent.redirect import Redirector
from node_agent.redirect.plan import Plan

log = logging.getLogger(__name__)


class DropIptablesLeftovers:
    """:class:`~node_agent.redirect.Redirector` over ``inner`` (the eBPF one)."""

    def __init__(self, inner: Redirector) -> None:
        self.inner = inner
        self.mode = inner.mode
        self._checked: set[str] = set()
        self.removed = 0  # pods whose leftovers were deleted

    async def _drop(self, netns_path: str) -> None:
        if netns_path in self._checked:
            return
        from node_agent.redirect import iptables  # python-iptables only once needed

        try:
            found = await asyncio.to_thread(iptables.remove_leftovers, netns_path)
        except AgentError as exc:
            log.warning("cannot look for iptables rules left in %s: %s", netns_path, exc)
            return  # looked for again next time
        self._checked.add(netns_path)
        if found:
            self.removed += 1
            log.info("removed the iptables redirection an earlier agent left in %s (now eBPF)",
                     netns_path)

    async def apply(self, netns_path: str, plan: Plan, pod_ip: ipaddress.IPv4Address) -> bool:
        await self._drop(netns_path)
        return await self.inner.apply(netns_path, plan, pod_ip)

    async def read(self, netns_path: str) -> Plan:
        await self._drop(netns_path)
        return await self.inner.read(netns_path)

    async def remove(self, netns_path: str) -> bool:
        await self._drop(netns_path)
        self._checked.discard(netns_path)
        return await self.inner.remove(netns_path)

    async def collect(self, live_netns: Iterable[str]) -> int:
        live = list(live_netns)
        self._checked &= set(live)
        return await self.inner.collect(live)
