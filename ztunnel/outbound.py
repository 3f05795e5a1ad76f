"""Outbound capture (15001 in each pod's netns): original destination → route → splice.

For each accepted connection: read ``SO_ORIGINAL_DST``, decide with :func:`routing.decide`
(service VIP → endpoint, enrolled workload → HBONE, else passthrough), open the upstream from
the SOURCE pod's netns with the mark, then splice. The client's reading is paused from accept
until the upstream exists, so no byte is read that could not be forwarded.

Any failure closes the client with RST (``SO_LINGER`` 0), is counted in
``nodemesh_ztunnel_refused_connections_total{direction="outbound",reason}`` and logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import cast

from ztunnel.connlog import ConnRecord
from ztunnel.conntrack import ConnTracker
from ztunnel.errors import (
    HboneConnectError,
    HboneError,
    HboneStatusError,
    OriginalDestinationError,
)
from ztunnel.metrics import Metrics
from ztunnel.netns import NetnsExecutor, connect_marked, set_rst_on_close
from ztunnel.routing import Passthrough, Refuse, RoundRobin, ViaHbone, decide
from ztunnel.runtime import PodRuntime
from ztunnel.seams import MeshView
from ztunnel.splice import Splice, SpliceResult, SpliceSide

log = logging.getLogger("ztunnel.outbound")

SO_ORIGINAL_DST = 80
_SOCKADDR_IN = struct.Struct("!HH4s8x")  # family (host order, see below), port, addr, zero


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """Parse a ``struct sockaddr_in`` as returned by ``getsockopt(SOL_IP, SO_ORIGINAL_DST)``."""
    if len(raw) < 8:
        raise OriginalDestinationError(f"sockaddr_in too short ({len(raw)} bytes)")
    family = int.from_bytes(raw[0:2], "little")  # sin_family is in host byte order (x86: LE)
    if family != socket.AF_INET:
        raise OriginalDestinationError(f"original destination is not IPv4 (family {family})")
    port = int.from_bytes(raw[2:4], "big")
    addr = socket.inet_ntoa(raw[4:8])
    if port == 0:
        raise OriginalDestinationError("original destination has port 0")
    return addr, port


def original_dst(sock: object) -> tuple[str, int]:
    getsockopt = getattr(sock, "getsockopt", None)
    if getsockopt is None:
        raise OriginalDestinationError("transport has no socket")
    try:
        raw = getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError as exc:
        raise OriginalDestinationError(
            f"SO_ORIGINAL_DST failed: {exc} (was the connection redirected to 15001?)"
        ) from exc
    return parse_sockaddr_in(bytes(raw))


def _addr(value: object) -> str:
    if isinstance(value, tuple) and len(value) >= 2:
        return f"{value[0]}:{value[1]}"
    return "unknown"


class OutboundProxy:
    """Shared by all pods' 15001 listeners; each pod's tunnels go through its own pool
    (``PodRuntime.pool``), never another pod's."""

    def __init__(
        self,
        *,
        view: MeshView,
        executor: NetnsExecutor,
        metrics: Metrics,
        connect_timeout: float = 5.0,
    ) -> None:
        self._view = view
        self._executor = executor
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._pick = RoundRobin()

    def protocol_factory(self, pod: PodRuntime) -> asyncio.Protocol:
        return _Accepted(self, pod)

    def refuse(self, pod: PodRuntime, transport: asyncio.BaseTransport, reason: str,
               detail: str) -> None:
        self._metrics.refuse("outbound", reason)
        log.warning("outbound from pod %s (%s) refused: %s: %s", pod.workload.name,
                    _addr(transport.get_extra_info("peername")), reason, detail)
        set_rst_on_close(transport.get_extra_info("socket"))
        cast(asyncio.Transport, transport).abort()

    async def handle(self, pod: PodRuntime, transport: asyncio.Transport) -> None:
        try:
            dst = original_dst(transport.get_extra_info("socket"))
        except OriginalDestinationError as exc:
            self.refuse(pod, transport, "no_original_dst", str(exc))
            return
        decision = decide(self._view.index, pod.workload, dst, self._pick)
        if isinstance(decision, Refuse):
            self.refuse(pod, transport, decision.reason, decision.detail)
            return
        tracker = pod.tracker
        if tracker is None:
            self.refuse(pod, transport, "pod_closing", f"pod {pod.uid} is being removed")
            return
        record = tracker.outbound(
            src=_addr(transport.get_extra_info("peername")), target=decision.target,
            destination=decision.workload,
            service=decision.service.key if decision.service is not None else None,
            mutual_tls=isinstance(decision, ViaHbone))
        splice = Splice(lambda result: self._done(pod, tracker, splice, record, result))
        try:
            if isinstance(decision, ViaHbone):
                await self._open_hbone(pod, decision, splice, record)
            else:
                await self._open_plain(pod, decision, splice)
        except (OSError, TimeoutError, HboneError) as exc:
            reason = _failure_reason(exc)
            tracker.failed(record, reason, response_flags="UF")
            self.refuse(pod, transport, reason, f"{record.dst}: {exc}")
            splice.abort(reason)
            return
        except asyncio.CancelledError:
            splice.abort("pod removed")
            tracker.failed(record, "cancelled")
            transport.abort()
            raise
        if transport.is_closing():
            # the client went away while we connected: drop the upstream too
            splice.abort("downstream closed")
            tracker.failed(record, "downstream_closed")
            return
        pod.track(splice)
        accepted = transport.get_protocol()
        if isinstance(accepted, _Accepted) and not accepted.hand_over(splice.downstream):
            splice.abort("client sent too much before the upstream connected")
            tracker.failed(record, "early_data_overflow")
            return
        transport.set_protocol(splice.downstream)
        splice.downstream.attach(transport, paused=True)
        if isinstance(accepted, _Accepted) and accepted.eof:
            splice.downstream.eof_received()

    async def _open_plain(self, pod: PodRuntime, decision: Passthrough, splice: Splice) -> None:
        sock = await connect_marked(
            self._executor, pod.netns_fd, decision.target, self._connect_timeout
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: splice.upstream, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _open_hbone(
        self, pod: PodRuntime, decision: ViaHbone, splice: Splice, record: ConnRecord
    ) -> None:
        async def connect_socket(addr: tuple[str, int]) -> socket.socket:
            return await connect_marked(self._executor, pod.netns_fd, addr, self._connect_timeout)

        pool = pod.pool
        if pool is None:
            raise HboneConnectError(f"pod {pod.uid} is being removed: it has no HBONE pool")
        stream = await pool.open_stream(
            src=pod.workload.identity,
            dst=decision.workload.identity,
            peer=decision.peer,
            authority=decision.authority,
            connect_socket=connect_socket,
            protocol=splice.upstream,
        )
        tls_version = stream.get_extra_info("tls_version")
        record.tls_version = tls_version if isinstance(tls_version, str) else None
        splice.upstream.attach(stream)

    def _done(self, pod: PodRuntime, tracker: ConnTracker, splice: Splice, record: ConnRecord,
              result: SpliceResult) -> None:
        pod.untrack(splice)
        tracker.finished(record, result)


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, HboneStatusError):
        status = getattr(exc, "status", 0)
        return "hbone_denied" if status == 401 else f"hbone_status_{status}"
    if isinstance(exc, HboneError):
        return "hbone_" + type(exc).__name__.removeprefix("Hbone").lower()
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    return "connect_failed"


class _Accepted(asyncio.Protocol):
    """The protocol of a just-accepted client until its upstream exists (then the splice's)."""

    def __init__(self, proxy: OutboundProxy, pod: PodRuntime) -> None:
        self._proxy: OutboundProxy | None = proxy
        self._pod: PodRuntime | None = pod
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        # uvloop starts reading an accepted socket after connection_made even if it was paused
        # there: whatever arrives before the upstream exists is kept, never dropped
        self._early: list[bytes] = []
        self._early_bytes = 0
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        self._early_bytes += len(data)
        if self._transport is not None:
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return True  # half-close: the answer may still come

    def hand_over(self, side: SpliceSide) -> bool:
        """Move the bytes read so far to the splice side taking over this transport."""
        ok = all(side.hold(chunk) for chunk in self._early)
        self._early, self._early_bytes = [], 0
        return ok

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.pause_reading()
        self._transport = t
        proxy, pod = self._proxy, self._pod
        assert proxy is not None and pod is not None
        if pod.closing:
            t.abort()
            return
        self._task = pod.tasks.spawn(proxy.handle(pod, t), "outbound")

    def connection_lost(self, exc: Exception | None) -> None:
        self._proxy = self._pod = None
        self._task = None
        self._transport = None
