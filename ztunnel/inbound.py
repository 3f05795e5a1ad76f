"""Inbound: the HBONE handler behind 15008 and the plaintext capture on 15006, per pod.

HBONE (:class:`InboundHandler`): a CONNECT is accepted only when

1. its target IP is this pod's IP (a pod is never a relay: anything else is 400), and not one of
   the ztunnel's own ports (400, loop);
2. :meth:`InboundHandler.authorize` allows the peer (today: every mTLS peer of our trust domain,
   which the HBONE server has already verified; issue 4 plugs policy in here → 401);
3. the app accepts a TCP connection from inside the pod's netns, with the mark (else 503).

Plaintext on 15006 (:class:`PlaintextInbound`): the pod is enrolled and ``STRICT`` is the default,
so every connection is reset and counted (``reason="plaintext_strict"``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import cast

from meshapi.ids import SpiffeId
from meshapi.model import Workload
from ztunnel.connlog import ConnLog, ConnRecord
from ztunnel.hbone.server import Accept, ConnectRequest, Reject
from ztunnel.metrics import ConnLabels, Metrics, destination_labels, workload_name
from ztunnel.netns import NetnsExecutor, connect_marked, set_rst_on_close
from ztunnel.routing import ZTUNNEL_PORTS
from ztunnel.runtime import PodRuntime
from ztunnel.seams import MeshView
from ztunnel.splice import Splice, SpliceResult

log = logging.getLogger("ztunnel.inbound")

#: an accepted CONNECT whose stream never attaches (peer gone before the 200) is dropped after this
ATTACH_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""


class InboundHandler:
    """The :data:`StreamHandler` of one pod's HBONE server."""

    def __init__(
        self,
        *,
        pod: PodRuntime,
        view: MeshView,
        executor: NetnsExecutor,
        metrics: Metrics,
        connlog: ConnLog,
        trust_domain: str,
        connect_timeout: float = 5.0,
    ) -> None:
        self._pod = pod
        self._view = view
        self._executor = executor
        self._metrics = metrics
        self._connlog = connlog
        self._trust_domain = trust_domain
        self._connect_timeout = connect_timeout

    def authorize(self, peer: SpiffeId, target: tuple[str, int]) -> Verdict:
        """The policy seam (issue 4). Today: any peer of our trust domain may connect."""
        if peer.trust_domain != self._trust_domain:
            return Verdict(False, f"peer {peer} is not in trust domain {self._trust_domain}")
        return Verdict(True)

    def _reject(self, status: int, reason: str, detail: str) -> Reject:
        self._metrics.refuse("inbound", reason)
        log.warning("inbound HBONE to pod %s refused (%d %s): %s",
                    self._pod.workload.name, status, reason, detail)
        return Reject(status, detail)

    async def __call__(self, request: ConnectRequest) -> Accept | Reject:
        pod = self._pod
        ip, port = request.target
        if ip != pod.ip:
            return self._reject(
                400, "not_this_pod",
                f"authority {request.authority} is not pod {pod.workload.name} ({pod.ip}); "
                "a pod is not a relay",
            )
        if port in ZTUNNEL_PORTS:
            return self._reject(400, "loop", f"authority {request.authority} is a ztunnel port")
        verdict = self.authorize(request.peer_identity, request.target)
        if not verdict.allowed:
            return self._reject(401, "denied", verdict.reason)
        if pod.closing:
            return self._reject(503, "pod_closing", f"pod {pod.workload.name} is being removed")
        try:
            sock = await connect_marked(self._executor, pod.netns_fd, request.target,
                                        self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            return self._reject(503, "app_unreachable", f"{request.authority}: {exc!r}")
        peer_ip = _ip(request.peer_address[0])
        src_workload = None if peer_ip is None else self._view.index.by_ip.get(peer_ip)
        labels = ConnLabels(
            reporter="destination",
            source_principal=str(request.peer_identity),
            source_workload=_src_name(src_workload, request.peer_identity),
            source_workload_namespace=request.peer_identity.namespace,
            connection_security_policy="mutual_tls",
            **destination_labels(pod.workload),
        )
        record = ConnRecord(
            direction="inbound", pod=pod.uid,
            src=f"{request.peer_address[0]}:{request.peer_address[1]}",
            dst=request.authority, labels=labels, src_identity=str(request.peer_identity),
            dst_identity=str(pod.workload.identity), tls_version=request.tls_version,
            security_policy="mutual_tls",
        )
        self._connlog.opened(record)
        splice = Splice(lambda result: self._done(splice, record, result))
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: splice.upstream, sock=sock)
        except OSError as exc:
            sock.close()
            self._connlog.closed(record, result="app_unreachable", response_flags="UF")
            return self._reject(503, "app_unreachable", f"{request.authority}: {exc!r}")
        pod.track(splice)

        def not_attached() -> None:
            if splice.downstream.transport is None:
                splice.abort("HBONE stream never attached")

        timer = loop.call_later(ATTACH_TIMEOUT_SECONDS, not_attached)

        def protocol_factory(stream: asyncio.Transport) -> asyncio.Protocol:
            timer.cancel()
            splice.downstream.attach(stream)
            return splice.downstream

        return Accept(protocol_factory)

    def _done(self, splice: Splice, record: ConnRecord, result: SpliceResult) -> None:
        self._pod.untrack(splice)
        self._connlog.closed(
            record,
            result="ok" if result.error is None else "error",
            bytes_sent=result.downstream_bytes,
            bytes_received=result.upstream_bytes,
        )


def _ip(value: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def _src_name(workload: Workload | None, identity: SpiffeId) -> str:
    if workload is not None and workload.identity == identity:
        return workload_name(workload)
    return "unknown"


class PlaintextInbound(asyncio.Protocol):
    """15006 under STRICT: reset every connection and count it."""

    def __init__(self, pod: PodRuntime, metrics: Metrics) -> None:
        self._pod = pod
        self._metrics = metrics

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._metrics.refuse("inbound", "plaintext_strict")
        log.warning(
            "plaintext connection to enrolled pod %s from %s refused (STRICT mTLS; "
            "the client must be in the mesh)",
            self._pod.workload.name, transport.get_extra_info("peername"),
        )
        set_rst_on_close(transport.get_extra_info("socket"))
        cast(asyncio.Transport, transport).abort()

