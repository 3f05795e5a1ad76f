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
from pathlib import Path
from typing import TYPE_CHECKING

from node_agent.config import Config
from node_agent.discovery import DiscoveryClient
from node_agent.errors import AgentError, RedirectError
from node_agent.metrics import AgentMetrics, MetricsServer
from node_agent.reconcile import Agent, WorkloadSource, ZtunnelSession
from node_agent.redirect import Redirector
from node_agent.redirect.plan import Settings
from node_agent.status import write_atomic
from node_agent.zds import ZdsConnection

if TYPE_CHECKING:
    from node_agent.kube.runtime import KubeNode

log = logging.getLogger(__name__)


def _iptables(config: Config) -> Redirector:
    from node_agent.redirect import ebpf
    from node_agent.redirect.iptables import IptablesRedirector

    # a node switched from eBPF to iptables: its programs must not capture on top of the rules
    if ebpf.teardown(config.node, config.bpf_pin_root or ebpf.PIN_ROOT):
        log.info("removed the eBPF state of node %s (now in iptables mode)", config.node)
    return IptablesRedirector()


def choose_redirector(config: Config) -> tuple[Redirector, str]:
    """(redirector, reason). ``auto`` tries eBPF (probe, then a real load, which runs the
    verifier) and falls back to iptables on any failure, with the reason; ``ebpf`` fails instead.
    Blocking (compiles the programs): call it in a thread."""
    if config.redirect_mode == "iptables":
        return _iptables(config), "requested with --redirect-mode iptables"
    from node_agent.redirect import ebpf
    from node_agent.redirect.ebpf import sys as bpfsys

    requested = config.redirect_mode
    try:
        cgroup = config.cgroup or bpfsys.cgroup2_mount()
    except AgentError as exc:
        cgroup, why = Path("/"), str(exc)
    else:
        why = ebpf.probe(cgroup) or ""
    if not why:
        try:
            redirector = ebpf.EbpfRedirector.start(
                config.node, cgroup, config.bpf_dir, config.bpf_pin_root or ebpf.PIN_ROOT,
                sockmap=config.ebpf_sockmap,
            )
        except AgentError as exc:
            why = f"the eBPF programs did not load: {exc}"
        else:
            from node_agent.redirect.modeswitch import DropIptablesLeftovers

            hop = ", in-pod hop on sockmap" if config.ebpf_sockmap else ""
            return (
                DropIptablesLeftovers(redirector),
                f"{requested}: eBPF programs loaded and attached to {cgroup}{hop}",
            )
    if requested == "ebpf":
        raise RedirectError(f"--redirect-mode ebpf: {why}")
    return _iptables(config), f"auto: eBPF not usable, using iptables: {why}"


def status_doc(
    config: Config,
    mode: str,
    reason: str,
    agent: Agent,
    disc: DiscoveryClient | None,
    kube: KubeNode | None,
) -> dict[str, object]:
    doc: dict[str, object] = {
        "node": config.node,
        "source": config.source,
        "redirectMode": mode,
        "redirectModeReason": reason,
        "mode": mode,  # the names docs/CONTRACTS.md first gave them (read by `meshctl status`)
        "modeReason": reason,
        "updated": time.time(),
        "ztunnel": {"connected": agent.ztunnel_connected, "lastError": agent.ztunnel_error},
    }
    if disc is not None:
        doc["discovery"] = {
            "connected": disc.connected,
            "synced": disc.state.synced,
            "epoch": disc.state.epoch,
            "version": disc.state.version,
            "lastError": disc.last_error,
        }
    if kube is not None:
        doc["kubernetes"] = kube.status()
    doc["pods"] = [agent.pods[u].to_json() for u in sorted(agent.pods)]
    return doc


async def serve(config: Config, stop: asyncio.Event) -> None:
    redirector, reason = await asyncio.to_thread(choose_redirector, config)
    mode = redirector.mode
    (log.warning if "not usable" in reason else log.info)("redirect mode %s (%s)", mode, reason)
    settings = Settings(host_probe_ip=config.host_probe_ip)
    metrics = AgentMetrics()
    metrics.set_info(config.node, mode, config.source)
    notify: list[Callable[[], None]] = []
    disc: DiscoveryClient | None = None
    kube: KubeNode | None = None
    source: WorkloadSource
    if config.source == "kubernetes":
        assert config.kube is not None
        # imported here: the kubernetes client is only loaded on Kubernetes
        from node_agent.kube.runtime import KubeNode

        kube = KubeNode(config.node, config.kube, metrics)
        source = kube.pods
    else:
        assert config.controller and config.ca_root and config.token_file
        disc = DiscoveryClient(
            config.controller, config.ca_root, config.token_file, on_change=lambda: notify[0]()
        )
        source = disc

    async def connect(on_close: Callable[[], None]) -> AbstractAsyncContextManager[ZtunnelSession]:
        return await ZdsConnection.connect(
            str(config.zds_socket), on_close=on_close, redirection=mode
        )

    status_dirty = asyncio.Event()

    def on_status() -> None:
        status_dirty.set()
        if kube is not None:
            kube.status_changed()

    probe_source = None
    if config.host_probe_auto:
        from node_agent.hostroute import source_towards

        probe_source = source_towards
    agent = Agent(config.node, settings, redirector, source, connect, on_status=on_status,
                  probe_source=probe_source, metrics=metrics)
    notify.append(agent.notify)

    async def write_status() -> None:
        if config.status_file is None:
            return
        while True:
            await asyncio.to_thread(
                write_atomic,
                config.status_file,
                status_doc(config, mode, reason, agent, disc, kube),
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
                if config.metrics_socket is not None:
                    server = MetricsServer(str(config.metrics_socket), metrics)
                    tg.create_task(server.serve(stop), name="metrics")
                if kube is not None:
                    kube.agent = agent
                    kube.start_watches(asyncio.get_running_loop())
                    for name, coro in kube.tasks(stop):
                        tg.create_task(coro, name=name)
                if disc is not None:
                    tg.create_task(disc.run(), name="discovery")
                tg.create_task(agent.run(), name="reconcile")
                tg.create_task(write_status(), name="status")
                tg.create_task(until_stopped(), name="stop")
        except* _Stop:
            raise _StopGroup from None
        finally:
            if kube is not None:
                await kube.stop_watches()
    if kube is not None and await kube.uninstalling():
        released = await agent.uninstall()
        await kube.uninstall()
        if mode == "ebpf":
            from node_agent.redirect import ebpf

            ebpf.teardown(config.node, config.bpf_pin_root or ebpf.PIN_ROOT)
        log.info("uninstall: released %d pod(s); the CNI plugin and its config entry are removed",
                 released)
        return
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

    try:
        asyncio.run(main())
    except AgentError as exc:
        log.error("%s", exc)
        return 1
    except ExceptionGroup as group:
        # a task of the TaskGroup failed (a socket another agent serves, ...): if only with
        # AgentErrors, their messages, not a traceback
        agent_errors, rest = group.split(AgentError)
        if agent_errors is None or rest is not None:
            raise
        for leaf in _leaves(agent_errors):
            log.error("%s", leaf)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
