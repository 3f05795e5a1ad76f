"""The ztunnel's HTTP endpoints (aiohttp): admin (``/config_dump``, ``/connections``, localhost
only), Prometheus ``/metrics`` and readiness ``/healthz/ready``. JSON shapes are fixed by
docs/CONTRACTS.md ("ztunnel admin endpoint")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ztunnel.agentmetrics import AgentScrape, scrape_budget
from ztunnel.connlog import ConnLog, rfc3339
from ztunnel.metrics import Metrics
from ztunnel.pods import PodManager
from ztunnel.seams import CertSource, MeshView

MAX_CONNECTIONS_LIMIT = 1024


def config_dump(
    node: str, view: MeshView, pods: PodManager, certs: CertSource
) -> dict[str, Any]:
    state = view.state
    return {
        "node": node,
        "workloads": [state.workloads[k].to_wire() for k in sorted(state.workloads)],
        "services": [state.services[k].to_wire() for k in sorted(state.services)],
        "authorizationPolicies": [
            state.authorization_policies[k].to_wire() for k in sorted(state.authorization_policies)
        ],
        "peerAuthentications": [
            state.peer_authentications[k].to_wire() for k in sorted(state.peer_authentications)
        ],
        "rootNamespace": state.root_namespace,
        "pathNormalization": state.path_normalization.value,
        "pods": [
            {
                "uid": str(p.workload.uid),
                "name": p.workload.name,
                "namespace": p.workload.namespace,
                "ip": str(p.workload.ip),
                "identity": str(p.workload.identity),
                "listeners": sorted(
                    s.sockets[0].getsockname()[1] for s in p.servers if s.sockets
                ),
                "redirection": p.redirection,
            }
            for p in pods.pods()
        ],
        "certificates": [
            {
                "identity": str(i.identity),
                "notBefore": rfc3339(i.not_before),
                "notAfter": rfc3339(i.not_after),
                "serial": f"{i.serial:x}",
            }
            for i in certs.infos()
        ],
        "discovery": {"epoch": state.epoch, "version": state.version,
                      "connected": view.connected},
    }


def admin_app(
    node: str, view: MeshView, pods: PodManager, certs: CertSource, connlog: ConnLog
) -> web.Application:
    async def dump(_: web.Request) -> web.Response:
        return web.json_response(config_dump(node, view, pods, certs))

    async def connections(request: web.Request) -> web.Response:
        raw = request.query.get("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            return web.json_response({"error": f"limit {raw!r} is not a number"}, status=400)
        limit = max(0, min(limit, MAX_CONNECTIONS_LIMIT))
        return web.json_response(connlog.recent(limit))

    app = web.Application()
    app.router.add_get("/config_dump", dump)
    app.router.add_get("/connections", connections)
    return app


SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def metrics_app(metrics: Metrics, agent: AgentScrape | None = None) -> web.Application:
    """``/metrics``: the ztunnel's registry, then (with ``agent``) the node agent's metrics,
    read on each scrape (ztunnel.agentmetrics): one endpoint for the whole node."""

    async def handle(request: web.Request) -> web.Response:
        extra = b""
        if agent is not None:
            # first: it sets nodemesh_agent_scrape_up, which the ztunnel's own part reports
            extra = await agent.scrape(scrape_budget(request.headers.get(SCRAPE_TIMEOUT_HEADER)))
        body = generate_latest(metrics.registry) + extra
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


def readiness_app(ready: Callable[[], str | None]) -> web.Application:
    """``ready()`` returns None when ready, else what is still missing."""

    async def handle(_: web.Request) -> web.Response:
        missing = ready()
        if missing is None:
            return web.Response(text="ready\n")
        return web.Response(text=f"not ready: {missing}\n", status=503)

    app = web.Application()
    app.router.add_get("/healthz/ready", handle)
    return app


async def serve(app: web.Application, host: str, port: int,
                started: asyncio.Event | None = None) -> None:
    """Serve ``app`` until cancelled."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
