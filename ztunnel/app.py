"""The ztunnel's composition root (STYLE.md 4): builds everything from a :class:`Config` and runs
it in one :class:`asyncio.TaskGroup` on uvloop.

Tasks: the discovery client, the certificate store's renewals, the ZDS server, the admin,
metrics (with the node agent's, read from its socket on each scrape) and readiness endpoints, and
the event-loop watchdog (``ztunnel.loopwatch``).
Readiness: discovery has synced once and the ZDS server listens.

Drain on SIGTERM/SIGINT: stop the ZDS server (no more pods), close every pod's listeners and
give its connections ``drain_seconds`` to finish, then abort what is left and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys

import uvloop

from ztunnel import admin
from ztunnel.agentmetrics import AgentScrape
from ztunnel.certs import CertificateStore, ControllerCertFetcher
from ztunnel.config import Config
from ztunnel.connlog import ConnLog
from ztunnel.conntrack import ConnTracker
from ztunnel.discovery import DiscoveryClient
from ztunnel.hbone.client import HbonePool
from ztunnel.hbone.server import HboneServer
from ztunnel.inbound import InboundHandler, PlaintextInbound
from ztunnel.loopwatch import LoopWatchdog
from ztunnel.metrics import HboneEvents, Metrics
from ztunnel.netns import NetnsExecutor
from ztunnel.outbound import OutboundProxy
from ztunnel.pods import PodHandlers, PodManager
from ztunnel.policy import PolicyEngine
from ztunnel.runtime import PodContext, PodRuntime
from ztunnel.seams import HboneListener, MeshView
from ztunnel.zds import ZdsServer

log = logging.getLogger("ztunnel")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, like the access log."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _Stop(Exception):
    """Raised inside the task group to end it on a signal."""


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    metrics = Metrics()
    connlog = ConnLog(metrics)
    view = MeshView()
    policy = PolicyEngine(view, metrics.registry, l7=True)
    executor = NetnsExecutor()
    fetcher = ControllerCertFetcher(config.controller, config.ca_root, config.token_file)
    certs = CertificateStore(fetcher, config.trust_domain)
    outbound = OutboundProxy(view=view, executor=executor, metrics=metrics,
                             connect_timeout=config.connect_timeout)

    def hbone_server(pod: PodRuntime, context: ssl.SSLContext) -> HboneListener:
        handler = InboundHandler(pod=pod, view=view, executor=executor, metrics=metrics,
                                 trust_domain=config.trust_domain,
                                 connect_timeout=config.connect_timeout, policy=policy)
        return HboneServer(context=context, trust_domain=config.trust_domain, handler=handler,
                           events=HboneEvents(metrics, pod.uid))

    pods = PodManager(
        executor=executor,
        certs=certs,
        handlers=PodHandlers(
            outbound=outbound.protocol_factory,
            plaintext=lambda pod: PlaintextInbound(
                pod, metrics, policy=policy, executor=executor,
                connect_timeout=config.connect_timeout),
            hbone_server=hbone_server,
        ),
        metrics=metrics,
        # each pod its own pool (a tunnel starts in its pod's netns, from its IP) and tracker
        context=lambda w: PodContext(
            pool=HbonePool(certs, connect_timeout=config.connect_timeout),
            tracker=ConnTracker(w, connlog, lambda ip: view.index.by_ip.get(ip))),
    )
    discovery = DiscoveryClient(controller=config.controller, ca_root=config.ca_root,
                                token_file=config.token_file, view=view, metrics=metrics)
    zds_server = ZdsServer(config.zds_socket, pods, metrics, node=config.node)

    def ready() -> str | None:
        if not discovery.synced.is_set():
            return "discovery has not synced"
        if not zds_server.listening.is_set():
            return "ZDS server is not listening"
        if executor.broken:
            return executor.broken
        return None

    async def wait_stop() -> None:
        await stop.wait()
        raise _Stop

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(discovery.run(), name="discovery")
            tg.create_task(certs.run(), name="certificates")
            tg.create_task(zds_server.run(), name="zds")
            tg.create_task(admin.serve(admin.admin_app(config.node, view, pods, certs, connlog),
                                       *config.admin), name="admin")
            agent_metrics = None
            if config.agent_metrics_socket is not None:
                agent_metrics = AgentScrape(config.agent_metrics_socket, metrics,
                                            timeout=config.agent_metrics_timeout)
            tg.create_task(admin.serve(admin.metrics_app(metrics, agent_metrics),
                                       *config.metrics), name="metrics")
            tg.create_task(admin.serve(admin.readiness_app(ready), *config.readiness),
                           name="readiness")
            tg.create_task(LoopWatchdog(metrics).run(), name="loopwatch")
            tg.create_task(wait_stop(), name="stop")
    except* _Stop:
        log.info("draining")
    finally:
        await _drain(pods, config.drain_seconds)
        executor.close()


async def _drain(pods: PodManager, seconds: float) -> None:
    """Stop accepting, wait for connections up to ``seconds``, then close everything."""
    for pod in pods.pods():
        for server in pod.servers:
            server.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            for pod in pods.pods():
                await pod.runtime.wait_idle()
    await pods.close()


def run(config: Config) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=config.log_level, handlers=[handler])

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    try:
        uvloop.run(main())
    except Exception as exc:
        log.critical("ztunnel failed: %s", exc, exc_info=True)
        return 1
    return 0
