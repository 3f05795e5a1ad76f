"""The HBONE server: terminates mutual TLS + HTTP/2 CONNECT on the inbound listener (15008).

Use ``HboneServer.protocol_factory`` with ``loop.create_server(...)``. Without ``ssl=`` the
server does TLS itself and so can count every refusal, including handshake failures and peers
that do not speak TLS; with ``ssl=context`` the loop does the handshake (and handshake failures
are only visible in the loop's debug log).

Invariants:

* A peer is served only after its chain verified against the mesh root (the SSL context), it
  carries exactly one SPIFFE id (``ztunnel.tls``) and that id is in our trust domain.
* Every refusal goes through ``HboneServerEvents.refused(reason, peer)``; reasons are a small
  fixed vocabulary, usable as a metric label.
* A malformed request is answered 400 on its stream; malformed HTTP/2 closes that peer's
  connection only. Handler tasks are owned by their connection and cancelled with it.
* A stream holds one of its connection's ``max_concurrent_streams`` slots from its HEADERS until
  its handler has finished AND its protocol's ``connection_lost`` has run (where the inbound
  splice aborts the app-side connection), whatever the peer reset meanwhile ("Rapid Reset",
  CVE-2023-44487): a CONNECT beyond the slots is refused with RST_STREAM REFUSED_STREAM. If the
  stream ended while its handler decided, an ``Accept``'s protocol is still created and given
  ``connection_made`` then ``connection_lost(HboneStreamError)``, so what the handler opened
  for it (the app connection) is released at once instead of at the handler's own timeout.
* Resets by the peer are budgeted per connection: all of them (``max_peer_resets``) and those of
  streams not yet answered, plus streams refused for want of a slot
  (``max_premature_resets``), per ``abuse_window`` seconds; over either, GOAWAY
  ENHANCE_YOUR_CALM (``reset_flood`` / ``rapid_reset``).
* Per listener: at most ``max_connections`` connections, ``max_connections_per_peer`` from one
  peer IP and ``max_handshakes`` TLS handshakes in progress; the client preface and SETTINGS
  must follow TLS within ``preface_timeout``; a connection without streams for
  ``idle_timeout`` gets GOAWAY and is closed.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import h2.errors
import h2.events

from meshapi.ids import SpiffeId
from ztunnel.errors import HboneStreamError
from ztunnel.hbone.connection import (
    ABUSE_WINDOW,
    DEFAULT_MAX_STREAMS,
    IDLE_TIMEOUT,
    MAX_CONTINUATIONS,
    MAX_CONTROL_FRAMES,
    MAX_EMPTY_FRAMES,
    MAX_HEADER_BLOCK,
    MAX_PEER_RESETS,
    MAX_PREMATURE_RESETS,
    MAX_WRITE_BUFFER,
    PREFACE_TIMEOUT,
    Budget,
    ConnectionLimits,
    HboneConnection,
    HboneStream,
)
from ztunnel.tls import check_trust_domain

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0

#: connections one listener (one pod's 15008) serves at a time
MAX_CONNECTIONS = 1024
#: connections from one peer IP (a source pod: its pool opens one per 100 streams)
MAX_CONNECTIONS_PER_PEER = 64
#: TLS handshakes in progress on one listener (each may last up to the handshake timeout)
MAX_HANDSHAKES = 128
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ConnectRequest:
    authority: str  # validated "ipv4:port"
    target: tuple[str, int]
    peer_identity: SpiffeId  # verified client cert (trust domain checked)
    peer_address: tuple[str, int]  # TCP peer of the HBONE connection
    tls_version: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Accept:
    #: called with the stream transport right after the 200 is sent; the returned protocol
    #: gets the stream's bytes
    protocol_factory: Callable[[asyncio.Transport], asyncio.Protocol]


@dataclass(frozen=True)
class Reject:
    status: int  # 400 / 401 / 503
    reason: str


StreamHandler = Callable[[ConnectRequest], Awaitable[Accept | Reject]]

#: the reasons ``HboneServerEvents.refused`` is called with
REFUSAL_REASONS = (
    "not_tls",
    "tls_handshake",
    "tls_handshake_timeout",
    "no_client_cert",
    "bad_cert_chain",
    "alpn",
    "identity",
    "bad_request",
    "too_many_streams",
    "protocol_error",
    "tls",
    "handler_error",
    # limits (issue 10)
    "too_many_connections",
    "too_many_connections_per_peer",
    "too_many_handshakes",
    "preface_timeout",
    "idle_timeout",
    "write_buffer_full",
    "header_block_too_large",
    "continuation_flood",
    "header_list_too_large",
    "rapid_reset",
    "reset_flood",
    "control_flood",
    "empty_frames",
)


class HboneServerEvents(Protocol):
    def refused(
        self, reason: str, peer: tuple[str, int] | None, *,
        identity: SpiffeId | None = None, detail: str = "",
    ) -> None:
        """A connection or stream was refused; ``reason`` is one of REFUSAL_REASONS,
        ``identity`` the peer's once TLS verified it, ``detail`` what exactly happened.
        Called once per refusal: log it here (the server does not log it again)."""
        ...


class LoggingServerEvents:
    """Default events: log each refusal and count it by reason."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def refused(
        self, reason: str, peer: tuple[str, int] | None, *,
        identity: SpiffeId | None = None, detail: str = "",
    ) -> None:
        self.counts[reason] += 1
        log.warning("HBONE refused peer %s (%s): %s%s", peer, identity or "identity unknown",
                    reason, f": {detail}" if detail else "")


def parse_authority(value: str) -> tuple[str, int] | None:
    """``"ipv4:port"`` → (ip, port), port 1..65535; None when malformed."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isascii() or not port_s.isdigit() or len(port_s) > 5:
        return None
    port = int(port_s)
    if not 1 <= port <= 65535:
        return None
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    return (str(ip), port)


def _validate(
    raw: list[tuple[bytes, bytes]],
) -> tuple[str, tuple[str, int], tuple[tuple[str, str], ...]] | str:
    """(authority, target, extra headers) of a valid CONNECT, else the reason it is not."""
    pseudo: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for name_b, value_b in raw:
        name = name_b.decode("latin-1")
        value = value_b.decode("latin-1")
        if name != name.lower():
            return f"upper-case header name {name!r}"
        if name.startswith(":"):
            if extra:
                return "pseudo-header after a regular header"
            if name in pseudo:
                return f"duplicate {name}"
            pseudo[name] = value
        else:
            extra.append((name, value))
    method = pseudo.get(":method")
    if method != "CONNECT":
        return f"method {method!r} is not CONNECT"
    if ":path" in pseudo or ":scheme" in pseudo or ":protocol" in pseudo:
        return "CONNECT must not carry :path, :scheme or :protocol"
    if set(pseudo) - {":method", ":authority"}:
        return f"unexpected pseudo-headers {sorted(set(pseudo) - {':method', ':authority'})}"
    authority = pseudo.get(":authority")
    if authority is None:
        return "missing :authority"
    target = parse_authority(authority)
    if target is None:
        return f"bad :authority {authority!r} (expected ipv4:port)"
    return authority, target, tuple(extra)


class _ServerConnection(HboneConnection):
    server_side = True

    def __init__(self, server: HboneServer) -> None:
        super().__init__(
            server.context,
            max_concurrent_streams=server.max_concurrent_streams,
            handshake_timeout=server.handshake_timeout,
            limits=server.limits,
        )
        self._server: HboneServer | None = server
        self._tasks: set[asyncio.Task[None]] = set()
        #: streams holding a slot (see the module docstring)
        self.slots = 0
        self._resets = Budget(self.limits.max_peer_resets, self.limits.abuse_window)
        self._premature = Budget(self.limits.max_premature_resets, self.limits.abuse_window)
        self._peer_ip: str | None = None  # set while counted in the server's connection caps
        self._handshaking = False  # counted in the server's handshakes in progress
        self._preface_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    # --- caps on connections and handshakes ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if server is None or self.closed:
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self.peername = (peer[0], peer[1]) if peer else None
        ip = self.peername[0] if self.peername else ""
        refusal = server.admit(ip, tls_pending=transport.get_extra_info("ssl_object") is None)
        if refusal is not None:
            reason, detail = refusal
            self.on_refused(reason, None, detail)
            self.closed = True
            cast(asyncio.Transport, transport).abort()
            return
        self._peer_ip = ip
        server.by_peer[ip] = server.by_peer.get(ip, 0) + 1
        server.total += 1
        if transport.get_extra_info("ssl_object") is None:
            self._handshaking = True
            server.handshaking += 1
        super().connection_made(transport)

    def _handshake_over(self) -> None:
        if self._handshaking:
            self._handshaking = False
            if self._server is not None:
                self._server.handshaking -= 1

    def _leave_caps(self) -> None:
        self._handshake_over()
        server, ip = self._server, self._peer_ip
        self._peer_ip = None
        if server is not None and ip is not None:
            server.total -= 1
            left = server.by_peer[ip] - 1
            if left:
                server.by_peer[ip] = left
            else:
                del server.by_peer[ip]

    # --- hooks ----------------------------------------------------------------------------

    def check_peer(self, identity: SpiffeId) -> None:
        assert self._server is not None
        check_trust_domain(identity, self._server.trust_domain)

    def on_refused(self, reason: str, exc: BaseException | None, detail: str = "") -> None:
        self._handshake_over()
        if self._server is not None:
            if exc is not None and not detail:
                detail = str(exc)
            self._server.events.refused(reason, self.peername, identity=self.identity,
                                        detail=detail)

    def on_protocol_error(self, reason: str, detail: str = "") -> None:
        self.on_refused(reason, None, detail)

    def on_ready(self) -> None:
        self._handshake_over()
        if self._awaiting_settings:
            self._preface_timer = self.loop.call_later(self.limits.preface_timeout,
                                                       self._on_preface_timeout)
        self._idle_since = self.loop.time()
        self._idle_timer = self.loop.call_later(self.limits.idle_timeout, self._idle_check)

    def on_settings_received(self) -> None:
        if self._preface_timer is not None:
            self._preface_timer.cancel()
            self._preface_timer = None

    def _on_preface_timeout(self) -> None:
        self._preface_timer = None
        if not self.closed and self._awaiting_settings:
            self.on_refused("preface_timeout", None,
                            f"no HTTP/2 preface and SETTINGS within {self.limits.preface_timeout}s "
                            "of the TLS handshake")
            self.abort()

    def _idle_check(self) -> None:
        """One timer per connection, re-armed for what is left of the idle time."""
        self._idle_timer = None
        if self.closed:
            return
        timeout = self.limits.idle_timeout
        if self.slots:
            self._idle_timer = self.loop.call_later(timeout, self._idle_check)
            return
        left = self._idle_since + timeout - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
            return
        self.refuse_connection("idle_timeout", f"no stream for {timeout}s",
                               h2.errors.ErrorCodes.NO_ERROR)

    def on_peer_reset(self, stream: HboneStream | None) -> None:
        now = self.loop.time()
        limits = self.limits
        if self._resets.spend(now):
            self.refuse_connection(
                "reset_flood",
                f"more than {limits.max_peer_resets} RST_STREAM in {limits.abuse_window}s",
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
            )
        elif stream is not None and not stream.answered and self._premature.spend(now):
            self._rapid_reset()

    def _rapid_reset(self) -> None:
        limits = self.limits
        self.refuse_connection(
            "rapid_reset",
            f"more than {limits.max_premature_resets} streams reset before their answer or "
            f"refused for want of a slot in {limits.abuse_window}s (Rapid Reset)",
            h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
        )

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)

    # --- streams --------------------------------------------------------------------------

    def _respond(self, stream_id: int, status: int) -> None:
        self.send_headers(stream_id, [(":status", str(status))], end_stream=True)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.answered = True
            stream.local_ended = True
            if not stream.remote_ended:
                self.reset_stream(stream, h2.errors.ErrorCodes.NO_ERROR)
            stream.lost(None)

    def _on_request(self, event: Any) -> None:
        sid: int = event.stream_id
        stream = HboneStream(self, sid)
        self.streams[sid] = stream
        if event.stream_ended:
            stream.remote_ended = True
        parsed = _validate(event.headers or [])
        if isinstance(parsed, str):
            self.on_refused("bad_request", None, f"bad CONNECT: {parsed}")
            self._respond(sid, 400)
            return
        if self.slots >= self._max_streams:
            # handlers of streams the peer already reset still hold the slots
            self.reset_stream(stream, h2.errors.ErrorCodes.REFUSED_STREAM)
            stream.lost(None)
            self.on_refused("too_many_streams", None,
                            f"{self.slots} streams still being handled (reset streams count "
                            "until their handler finished)")
            if not self.closed and self._premature.spend(self.loop.time()):
                self._rapid_reset()
            return
        authority, target, extra = parsed
        assert self.identity is not None and self.peername is not None
        req = ConnectRequest(
            authority=authority,
            target=target,
            peer_identity=self.identity,
            peer_address=self.peername,
            tls_version=self.tls_version or "",
            headers=extra,
        )
        self.slots += 1
        stream.holds = 2  # the handler + the stream's protocol
        stream.on_released = functools.partial(self._release, stream)
        task = self.loop.create_task(self._handle(stream, req), name=f"hbone-connect-{sid}")
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._handled, stream))

    def _handled(self, stream: HboneStream, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._release(stream)

    def _release(self, stream: HboneStream) -> None:
        stream.holds -= 1
        if stream.holds == 0:
            self.slots -= 1
            if not self.slots:
                self._idle_since = self.loop.time()

    async def _handle(self, stream: HboneStream, req: ConnectRequest) -> None:
        server = self._server
        if server is None:
            return
        try:
            result = await server.handler(req)
        except Exception:
            log.exception("HBONE stream handler failed for %s → %s", req.peer_identity,
                          req.authority)
            result = Reject(503, "handler error")
            self.on_refused("handler_error", None)
        if stream.is_closing() or self.closed:
            # the client went away while we decided: release what the handler opened now
            if isinstance(result, Accept):
                _discard(result, stream)
            return
        if isinstance(result, Reject):
            self._respond(stream.stream_id, result.status)
            self.flush()
            return
        stream.answered = True
        self.send_headers(stream.stream_id, [(":status", "200")])
        self.flush()
        try:
            protocol = result.protocol_factory(stream)
        except Exception:
            log.exception("HBONE protocol factory failed for %s", req.authority)
            stream.abort()
            return
        stream.attach(protocol)
        self.flush()

    def on_lost(self, exc: Exception | None) -> None:
        for timer in (self._preface_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._preface_timer = self._idle_timer = None
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._leave_caps()
        if self._server is not None:
            self._server.connections.discard(self)
            self._server = None


def _discard(result: Accept, stream: HboneStream) -> None:
    """Give an Accept for a stream that already ended its protocol, and end it at once."""
    try:
        protocol = result.protocol_factory(stream)
        protocol.connection_made(stream)
        protocol.connection_lost(HboneStreamError("the HBONE stream ended before it was accepted"))
    except Exception:
        log.exception("HBONE: releasing an Accept for an ended stream failed")


class HboneServer:
    """Serves HBONE on one or many listeners; ``protocol_factory`` per accepted connection.

    Every limit has a constant for its default (``ztunnel.hbone.connection`` and above); see the
    module docstring for what each bounds and the reason it is refused with."""

    def __init__(
        self,
        *,
        context: ssl.SSLContext,
        trust_domain: str,
        handler: StreamHandler,
        events: HboneServerEvents | None = None,
        max_concurrent_streams: int = DEFAULT_MAX_STREAMS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
        max_handshakes: int = MAX_HANDSHAKES,
        preface_timeout: float = PREFACE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        max_header_block: int = MAX_HEADER_BLOCK,
        max_continuations: int = MAX_CONTINUATIONS,
        max_peer_resets: int = MAX_PEER_RESETS,
        max_premature_resets: int = MAX_PREMATURE_RESETS,
        max_control_frames: int = MAX_CONTROL_FRAMES,
        max_empty_frames: int = MAX_EMPTY_FRAMES,
        abuse_window: float = ABUSE_WINDOW,
    ) -> None:
        self.context = context
        self.trust_domain = trust_domain
        self.handler = handler
        self.events: HboneServerEvents = events if events is not None else LoggingServerEvents()
        self.max_concurrent_streams = max_concurrent_streams
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.max_handshakes = max_handshakes
        self.limits = ConnectionLimits(
            max_write_buffer=max_write_buffer,
            max_header_block=max_header_block,
            max_continuations=max_continuations,
            max_empty_frames=max_empty_frames,
            max_control_frames=max_control_frames,
            max_peer_resets=max_peer_resets,
            max_premature_resets=max_premature_resets,
            abuse_window=abuse_window,
            preface_timeout=preface_timeout,
            idle_timeout=idle_timeout,
        )
        # weak: a protocol whose loop-side TLS handshake failed is never told; let it go
        self.connections: weakref.WeakSet[_ServerConnection] = weakref.WeakSet()
        #: connections counted against the caps, by peer IP (entries at 0 are removed)
        self.by_peer: dict[str, int] = {}
        self.total = 0
        self.handshaking = 0
        self._closing = False

    def admit(self, ip: str, *, tls_pending: bool) -> tuple[str, str] | None:
        """(reason, detail) when a new connection from ``ip`` is over a cap, else None."""
        total = self.total
        if total >= self.max_connections:
            return "too_many_connections", f"{total} connections (bound {self.max_connections})"
        from_peer = self.by_peer.get(ip, 0)
        if from_peer >= self.max_connections_per_peer:
            return ("too_many_connections_per_peer",
                    f"{from_peer} connections from {ip} (bound {self.max_connections_per_peer})")
        if tls_pending and self.handshaking >= self.max_handshakes:
            return ("too_many_handshakes",
                    f"{self.handshaking} TLS handshakes in progress (bound {self.max_handshakes})")
        return None

    def connection_count(self) -> int:
        """Connections counted against the caps (for the admin endpoint and tests)."""
        return self.total

    def protocol_factory(self) -> asyncio.Protocol:
        conn = _ServerConnection(self)
        if self._closing:
            conn.closed = True  # refuse quietly during shutdown
        self.connections.add(conn)
        return conn

    async def close(self) -> None:
        """GOAWAY to every connection, then close them all."""
        self._closing = True
        conns = list(self.connections)
        for conn in conns:
            conn.goaway()
            conn.close_transport()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.gather(*(c.wait_closed() for c in conns))
        except TimeoutError:
            for conn in list(self.connections):
                conn.abort()
        await asyncio.sleep(0)
