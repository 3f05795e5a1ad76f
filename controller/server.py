"""The controller's HTTP surfaces (aiohttp):

* the API (TLS, node bearer token on every request): ``GET /v1/discovery`` (ndjson stream, see
  :mod:`meshapi.discovery`) and ``POST /v1/csr`` (see :mod:`meshapi.csr`);
* plain HTTP for operators: ``/metrics``, ``/healthz``, ``/readyz``, ``/debug/status``.

Errors answer ``{"error": "..."}`` with 400 (malformed), 401 (node credential), 403 (identity
not allowed for this node), 413 (too large), 503 (not ready yet, or the node credential cannot be
checked right now: the Kubernetes TokenReview API failed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from controller.auth import NodeAuthenticator
from controller.ca import CertificateAuthority
from controller.csr import authorize, parse_request_body, validate_csr
from controller.discovery import DiscoveryHub, Subscription
from controller.errors import AuthError, AuthUnavailable, CsrRejected
from controller.metrics import Metrics
from controller.translate import ConfigIssue
from meshapi.csr import MAX_CSR_BYTES, CsrResponse
from meshapi.discovery import HEARTBEAT_SECONDS, STREAM_IDLE_TIMEOUT_SECONDS
from meshapi.ids import NodeName

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
#: a node whose socket does not take a line for this long is cut (it reconnects and resyncs)
WRITE_TIMEOUT_SECONDS = STREAM_IDLE_TIMEOUT_SECONDS


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def tls_server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    def __init__(
        self,
        hub: DiscoveryHub,
        ca: CertificateAuthority,
        tokens: NodeAuthenticator,
        metrics: Metrics,
        trust_domain: str,
        cert_ttl: dt.timedelta,
        is_ready: Callable[[], bool],
        scheduled: Callable[[], Collection[tuple[str, str, str]]] = frozenset,
    ) -> None:
        self.hub = hub
        self.scheduled = scheduled
        self.ca = ca
        self.tokens = tokens
        self.metrics = metrics
        self.trust_domain = trust_domain
        self.cert_ttl = cert_ttl
        self.is_ready = is_ready

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CSR_BYTES)
        app.router.add_get("/v1/discovery", self.discovery)
        app.router.add_post("/v1/csr", self.csr)
        return app

    async def _authenticate(self, request: web.Request) -> NodeName | web.Response:
        try:
            return await self.tokens.authenticate(request.headers.get("Authorization"))
        except AuthUnavailable as exc:
            log.warning(
                "event=auth_unavailable path=%s peer=%s reason=%r",
                request.path,
                request.remote,
                str(exc),
            )
            return error_response(503, str(exc))
        except AuthError as exc:
            self.metrics.auth_failures.inc()
            log.warning(
                "event=auth_failed path=%s peer=%s reason=%r",
                request.path,
                request.remote,
                str(exc),
            )
            return error_response(401, str(exc))

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        node = await self._authenticate(request)
        if isinstance(node, web.Response):
            return node
        if not self.is_ready():
            return error_response(503, "controller has not loaded its configuration yet; retry")
        epoch = request.query.get("epoch") or None
        version: int | None = None
        try:
            version = int(request.query["version"]) if "version" in request.query else None
        except ValueError:
            version = None  # unusable resume point: the node gets a snapshot
        sub = self.hub.subscribe(node, epoch, version)
        log.info(
            "event=discovery_connected node=%s peer=%s resume=%s/%s answer=%s version=%d",
            node,
            request.remote,
            epoch or "-",
            version if version is not None else "-",
            "deltas" if sub.resumed else "snapshot",
            self.hub.version,
        )
        resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
        resp.enable_chunked_encoding()
        reason = "closed"
        try:
            await resp.prepare(request)
            for data in sub.initial:
                await self._write(resp, data)
            reason = await self._pump(resp, sub)
        except (ConnectionResetError, TimeoutError) as exc:
            reason = f"write failed: {type(exc).__name__}"
        finally:
            self.hub.unsubscribe(sub)
            log.info("event=discovery_disconnected node=%s reason=%r", node, reason)
        return resp

    async def _pump(self, resp: web.StreamResponse, sub: Subscription) -> str:
        while not sub.closed:
            while not sub.queue.empty():
                await self._write(resp, sub.queue.get_nowait())
            if sub.closed:
                break
            sub.wake.clear()
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    await sub.wake.wait()
            except TimeoutError:
                await self._write(resp, self.hub.heartbeat())
        return sub.closed_reason

    @staticmethod
    async def _write(resp: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
            await resp.write(data)

    async def csr(self, request: web.Request) -> web.Response:
        node = await self._authenticate(request)
        if isinstance(node, web.Response):
            if node.status == 401:  # a 503 (credential not checkable now) is no refusal
                self.metrics.csr_refused.labels("unauthenticated").inc()
            return node
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise CsrRejected(
                    "too_large", f"request body exceeds {MAX_CSR_BYTES} bytes", 413
                ) from None
            csr, identity = validate_csr(parse_request_body(body), self.trust_domain)
            authorize(node, identity, self.hub.workloads.values(), self.scheduled())
        except CsrRejected as exc:
            self.metrics.csr_refused.labels(exc.reason).inc()
            log.warning(
                "event=csr_refused node=%s reason=%s status=%d message=%r",
                node,
                exc.reason,
                exc.status,
                exc.message,
            )
            return error_response(exc.status, exc.message)
        issued = self.ca.sign_workload(csr, identity, self.cert_ttl)
        self.metrics.csr_signed.inc()
        log.info(
            "event=csr_signed node=%s identity=%s serial=%x not_after=%s",
            node,
            identity,
            issued.leaf.serial_number,
            rfc3339(issued.leaf.not_valid_after_utc),
        )
        answer = CsrResponse(
            issued.chain_pem(), issued.root_pem(), rfc3339(issued.leaf.not_valid_after_utc)
        )
        return web.json_response(answer.to_wire())


class Ops:
    """Plain-HTTP operator endpoints."""

    def __init__(
        self,
        hub: DiscoveryHub,
        metrics: Metrics,
        is_ready: Callable[[], bool],
        config_errors: Callable[[], Sequence[ConfigIssue]],
        policy_warnings: Callable[[], Sequence[ConfigIssue]] = tuple,
        extra_status: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.extra_status = extra_status
        self.hub = hub
        self.metrics = metrics
        self.is_ready = is_ready
        self.config_errors = config_errors
        self.policy_warnings = policy_warnings

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/debug/status", self.status)
        app.router.add_get("/debug/config", self.config)
        return app

    async def config(self, request: web.Request) -> web.Response:
        """The configuration in force as a discovery snapshot (meshapi wire JSON): what
        ``meshctl policy explain`` evaluates against."""
        return web.json_response(self.hub.snapshot().to_wire())

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: configuration not loaded yet\n")

    async def status(self, request: web.Request) -> web.Response:
        subs = sorted(self.hub.subscriptions, key=lambda s: (s.node, s.since))
        return web.json_response(
            {
                "ready": self.is_ready(),
                "epoch": self.hub.epoch,
                "version": self.hub.version,
                "workloads": len(self.hub.workloads),
                "services": len(self.hub.services),
                "authorizationPolicies": len(self.hub.authorization_policies),
                "peerAuthentications": len(self.hub.peer_authentications),
                "configErrors": [e.to_json() for e in self.config_errors()],
                "policyWarnings": [w.to_json() for w in self.policy_warnings()],
                "connectedNodes": [
                    {
                        "node": s.node,
                        "since": rfc3339(dt.datetime.fromtimestamp(s.since, dt.UTC)),
                        "resumed": s.resumed,
                    }
                    for s in subs
                ],
                **self.extra_status(),
            }
        )
