"""Inbound: the HBONE handler behind 15008 and the plaintext capture on 15006, per pod.

HBONE (:class:`InboundHandler`): a CONNECT is accepted only when

1. its target IP is this pod's IP (a pod is never a relay: anything else is 400), and not one of
   the ztunnel's own ports (400, loop);
2. :meth:`InboundHandler.authorize` allows the peer: a peer of our trust domain (which the HBONE
   server has already verified) that the AuthorizationPolicies of the pod allow at L4
   (:mod:`ztunnel.policy`), else 401;
3. the app accepts a TCP connection from inside the pod's netns, with the mark (else 503).

Accepted connections are tracked by the policy engine with their attributes, and closed when a
later policy change denies them.

Plaintext on 15006 (:class:`PlaintextInbound`): the PeerAuthentication mode of the destination
port decides. ``STRICT`` (the default) resets the connection and counts it
(``reason="plaintext_strict"``); ``PERMISSIVE`` and ``DISABLE`` let it through with no peer
identity, after the AuthorizationPolicies allow it (else reset, ``reason="denied"``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import cast

from meshapi.ids import SpiffeId
from meshapi.policy import Attributes, plaintext_allowed
from ztunnel.connlog import ConnRecord
from ztunnel.conntrack import ConnTracker
from ztunnel.errors import OriginalDestinationError
from ztunnel.hbone.server import Accept, ConnectRequest, Reject
from ztunnel.l7 import L7Splice
from ztunnel.metrics import Metrics
from ztunnel.netns import NetnsExecutor, connect_marked, set_rst_on_close
from ztunnel.outbound import original_dst
from ztunnel.policy import PolicyEngine
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
    #: L7 rules apply on this HTTP port: every request is decided (ztunnel.l7)
    l7: bool = False


class InboundHandler:
    """The :data:`StreamHandler` of one pod's HBONE server."""

    def __init__(
        self,
        *,
        pod: PodRuntime,
        view: MeshView,
        executor: NetnsExecutor,
        metrics: Metrics,
        trust_domain: str,
        connect_timeout: float = 5.0,
        policy: PolicyEngine | None = None,
    ) -> None:
        self._pod = pod
        self._view = view
        self._executor = executor
        self._metrics = metrics
        self._trust_domain = trust_domain
        self._connect_timeout = connect_timeout
        self._policy = policy

    def attributes(
        self, peer: SpiffeId, target: tuple[str, int], source_ip: str
    ) -> Attributes | None:
        src = _ip(source_ip)
        dst = _ip(target[0])
        if src is None or dst is None:
            return None
        http = self._policy is not None and self._policy.is_http_port(self._pod.workload,
                                                                       target[1])
        return Attributes(src, dst, target[1], peer=peer, http_port=http)

    def authorize(self, peer: SpiffeId, target: tuple[str, int], source_ip: str = "") -> Verdict:
        """The policy seam: a peer of our trust domain that the pod's AuthorizationPolicies
        allow at the connection stage."""
        if peer.trust_domain != self._trust_domain:
            return Verdict(False, f"peer {peer} is not in trust domain {self._trust_domain}")
        if self._policy is None:
            return Verdict(True)
        attrs = self.attributes(peer, target, source_ip)
        if attrs is None:
            return Verdict(False, f"unparseable address {source_ip!r} or {target[0]!r}")
        decision = self._policy.check(self._pod.workload, attrs, "connection")
        return Verdict(decision.allowed, decision.reason, decision.needs_request)

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
        verdict = self.authorize(request.peer_identity, request.target,
                                 request.peer_address[0])
        if not verdict.allowed:
            return self._reject(401, "denied", verdict.reason)
        if pod.closing:
            return self._reject(503, "pod_closing", f"pod {pod.workload.name} is being removed")
        try:
            sock = await connect_marked(self._executor, pod.netns_fd, request.target,
                                        self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            return self._reject(503, "app_unreachable", f"{request.authority}: {exc!r}")
        tracker = pod.tracker
        if tracker is None:
            sock.close()
            return self._reject(503, "pod_closing", f"pod {pod.workload.name} is being removed")
        record = tracker.inbound(src=request.peer_address, dst=request.authority,
                                 peer=request.peer_identity, tls_version=request.tls_version)
        labels = record.labels
        attrs = self.attributes(request.peer_identity, request.target, request.peer_address[0])
        splice: Splice
        if verdict.l7 and self._policy is not None and attrs is not None:
            engine = self._policy
            splice = L7Splice(lambda result: self._done(tracker, splice, record, result),
                              attributes=attrs,
                              authorize=engine.request_authorizer(pod.workload),
                              metrics=engine.l7_metrics, labels=labels,
                              reject=self._metrics.reject,
                              path_normalization=lambda: engine.path_normalization)
        else:
            splice = Splice(lambda result: self._done(tracker, splice, record, result))
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: splice.upstream, sock=sock)
        except OSError as exc:
            sock.close()
            tracker.failed(record, "app_unreachable", response_flags="UF")
            return self._reject(503, "app_unreachable", f"{request.authority}: {exc!r}")
        pod.track(splice)
        if self._policy is not None and attrs is not None:
            self._policy.track(splice, pod.workload, attrs, splice.abort,
                               l7=isinstance(splice, L7Splice))

        def not_attached() -> None:
            if splice.downstream.transport is None:
                splice.abort("HBONE stream never attached")

        timer = loop.call_later(ATTACH_TIMEOUT_SECONDS, not_attached)

        def protocol_factory(stream: asyncio.Transport) -> asyncio.Protocol:
            timer.cancel()
            splice.downstream.attach(stream)
            return splice.downstream

        return Accept(protocol_factory)

    def _done(self, tracker: ConnTracker, splice: Splice, record: ConnRecord,
              result: SpliceResult) -> None:
        self._pod.untrack(splice)
        if self._policy is not None:
            self._policy.untrack(splice)
        tracker.finished(record, result)


def _ip(value: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


class PlaintextInbound(asyncio.Protocol):
    """15006: plaintext to an enrolled pod. Without a policy engine, or under ``STRICT``: reset
    and count. Under ``PERMISSIVE``/``DISABLE``: authorize with no peer identity, then splice to
    the app inside the pod's netns (marked socket, so it is not captured again)."""

    def __init__(
        self,
        pod: PodRuntime,
        metrics: Metrics,
        *,
        policy: PolicyEngine | None = None,
        executor: NetnsExecutor | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self._pod = pod
        self._metrics = metrics
        self._policy = policy
        self._executor = executor
        self._connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._eof = False

    def _refuse(self, transport: asyncio.Transport, reason: str, detail: str) -> None:
        self._metrics.refuse("inbound", reason)
        log.warning("plaintext connection to enrolled pod %s from %s refused: %s",
                    self._pod.workload.name, transport.get_extra_info("peername"), detail)
        set_rst_on_close(transport.get_extra_info("socket"))
        transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.pause_reading()
        self._transport = t
        target = self._target(t)
        policy = self._policy
        if policy is None or target is None or self._executor is None:
            self._refuse(t, "plaintext_strict",
                         "STRICT mTLS; the client must be in the mesh")
            return
        mode = policy.mtls_mode(self._pod.workload, target[1])
        if not plaintext_allowed(mode):
            self._refuse(t, "plaintext_strict",
                         f"{mode.value} mTLS on port {target[1]}; the client must be in the mesh")
            return
        peer = t.get_extra_info("peername")
        src = _ip(peer[0]) if isinstance(peer, tuple) else None
        dst = _ip(target[0])
        if src is None or dst is None:
            self._refuse(t, "no_original_dst", f"unusable addresses {peer!r} -> {target!r}")
            return
        attrs = Attributes(src, dst, target[1], peer=None,
                           http_port=policy.is_http_port(self._pod.workload, target[1]))
        decision = policy.check(self._pod.workload, attrs, "connection")
        if not decision.allowed:
            self._refuse(t, "denied", decision.reason)
            return
        if self._pod.closing:
            t.abort()
            return
        self._pod.tasks.spawn(self._open(t, target, attrs, decision.needs_request),
                              "plaintext-inbound")

    def _target(self, t: asyncio.Transport) -> tuple[str, int] | None:
        sock = t.get_extra_info("socket")
        try:
            return original_dst(sock)
        except OriginalDestinationError:
            # redirection that keeps the destination (eBPF sk_lookup): the local address is it
            name = t.get_extra_info("sockname")
            if isinstance(name, tuple) and len(name) >= 2 and name[1] not in ZTUNNEL_PORTS:
                return str(name[0]), int(name[1])
            return None

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        self._early_bytes += len(data)
        if self._transport is not None:
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    async def _open(self, t: asyncio.Transport, target: tuple[str, int],
                    attrs: Attributes, l7: bool) -> None:
        pod, policy, executor = self._pod, self._policy, self._executor
        assert policy is not None and executor is not None
        peer = t.get_extra_info("peername")
        tracker = pod.tracker
        if tracker is None or not isinstance(peer, tuple):
            self._refuse(t, "pod_closing", f"pod {pod.workload.name} is being removed")
            return
        record = tracker.inbound(src=(str(peer[0]), int(peer[1])),
                                 dst=f"{target[0]}:{target[1]}", peer=None)
        labels = record.labels

        def done(result: SpliceResult) -> None:
            pod.untrack(splice)
            policy.untrack(splice)
            tracker.finished(record, result)

        splice = (
            L7Splice(done, attributes=attrs, authorize=policy.request_authorizer(pod.workload),
                     metrics=policy.l7_metrics, labels=labels, reject=self._metrics.reject,
                     path_normalization=lambda: policy.path_normalization)
            if l7 else Splice(done)
        )
        try:
            sock = await connect_marked(executor, pod.netns_fd, target, self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            self._refuse(t, "app_unreachable", f"{target}: {exc!r}")
            splice.abort("app_unreachable")
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: splice.upstream, sock=sock)
        except OSError as exc:
            sock.close()
            self._refuse(t, "app_unreachable", f"{target}: {exc!r}")
            splice.abort("app_unreachable")
            return
        if t.is_closing():
            splice.abort("downstream closed")
            return
        pod.track(splice)
        policy.track(splice, pod.workload, attrs, splice.abort, l7=l7)
        for chunk in self._early:
            if not splice.downstream.hold(chunk):
                splice.abort("client sent too much before the app connected")
                return
        self._early, self._early_bytes = [], 0
        t.set_protocol(splice.downstream)
        splice.downstream.attach(t, paused=True)
        if self._eof:
            splice.downstream.eof_received()

