"""Composition root of the node agent (STYLE.md 4): builds everything from a :class:`Config` and
runs it in one ``asyncio.TaskGroup``.

Invariants: SIGTERM/SIGINT end the process *without* removing any rule or telling the ztunnel
anything: a restarted agent re-reads the pods and repairs only what differs, so pods are never
disturbed by an agent restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from node_agent.config import Config
from node_agent.discovery import DiscoveryClient
from node_agent.reconcile import Agent, ZtunnelSession
from node_agent.redirect import Redirector
from node_agent.redirect.plan import Settings
from node_agent.status import write_atomic
from node_agent.zds import ZdsConnection

log = logging.getLogger(__name__)


def resolve_mode(requested: str) -> tuple[str, str]:
    """(mode, reason). Only iptables exists for now."""
    if requested == "iptables":
        return "iptables", "requested with --redirect-mode iptables"
    return "iptables", "auto: eBPF redirection is not available in this build; using iptables"


def make_redirector(mode: str) -> Redirector:
    from node_agent.redirect.iptables import IptablesRedirector

    return IptablesRedirector()


def status_doc(
    config: Config, mode: str, reason: str, agent: Agent, disc: DiscoveryClient
) -> dict[str, object]:
    return {
        "node": config.node,
        "redirectMode": mode,
        "redirectModeReason": reason,
        "updated": time.time(),
        "ztunnel": {"connected": agent.ztunnel_connected, "lastError": agent.ztunnel_error},
        "discovery": {
            "connected": disc.connected,
            "synced": disc.state.synced,
            "epoch": disc.state.epoch,
            "version": disc.state.version,
            "lastError": disc.last_error,
        },
        "pods": [agent.pods[u].to_json() for u in sorted(agent.pods)],
    }


async def serve(config: Config, stop: asyncio.Event) -> None:
    mode, reason = resolve_mode(config.redirect_mode)
    log.info("redirect mode %s (%s)", mode, reason)
    settings = Settings(host_probe_ip=config.host_probe_ip)
    notify: list[Callable[[], None]] = []
    disc = DiscoveryClient(
        config.controller, config.ca_root, config.token_file, on_change=lambda: notify[0]()
    )

    async def connect(on_close: Callable[[], None]) -> AbstractAsyncContextManager[ZtunnelSession]:
        return await ZdsConnection.connect(str(config.zds_socket), on_close=on_close)

    status_dirty = asyncio.Event()
    agent = Agent(
        config.node, settings, make_redirector(mode), disc, connect,
        on_status=status_dirty.set,
    )
    notify.append(agent.notify)

    async def write_status() -> None:
        if config.status_file is None:
            return
        while True:
            await asyncio.to_thread(
                write_atomic, config.status_file, status_doc(config, mode, reason, agent, disc)
            )
            status_dirty.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):  # refresh connection state now and then
                    await status_dirty.wait()

    async def until_stopped() -> None:
        await stop.wait()
        raise _Stop

    with contextlib.suppress(_StopGroup):
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(disc.run(), name="discovery")
                tg.create_task(agent.run(), name="reconcile")
                tg.create_task(write_status(), name="status")
                tg.create_task(until_stopped(), name="stop")
        except* _Stop:
            raise _StopGroup from None
    log.info("stopped; pod redirection left in place")


class _Stop(Exception):
    pass


class _StopGroup(Exception):
    pass


def run(config: Config) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(main())
    return 0
