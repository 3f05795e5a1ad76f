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
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import h2.errors
import h2.events

from meshapi.ids import SpiffeId
from ztunnel.hbone.connection import DEFAULT_MAX_STREAMS, HboneConnection, HboneStream
from ztunnel.tls import check_trust_domain

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0


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
)


class HboneServerEvents(Protocol):
    def refused(self, reason: str, peer: tuple[str, int] | None) -> None:
        """A connection or stream was refused; ``reason`` is one of REFUSAL_REASONS."""
        ...


class LoggingServerEvents:
    """Default events: log each refusal and count it by reason."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def refused(self, reason: str, peer: tuple[str, int] | None) -> None:
        self.counts[reason] += 1
        log.warning("HBONE refused a peer %s: %s", peer, reason)


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
        )
        self._server: HboneServer | None = server
        self._tasks: set[asyncio.Task[None]] = set()

    def check_peer(self, identity: SpiffeId) -> None:
        assert self._server is not None
        check_trust_domain(identity, self._server.trust_domain)

    def on_refused(self, reason: str, exc: BaseException | None) -> None:
        if self._server is not None:
            if exc is not None:
                log.info("HBONE peer %s refused (%s): %s", self.peername, reason, exc)
            self._server.events.refused(reason, self.peername)

    def on_protocol_error(self, reason: str) -> None:
        self.on_refused(reason, None)

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)

    def _respond(self, stream_id: int, status: int) -> None:
        self.send_headers(stream_id, [(":status", str(status))], end_stream=True)
        stream = self.streams.get(stream_id)
        if stream is not None:
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
            log.info("HBONE bad CONNECT from %s (%s): %s", self.peername, self.identity, parsed)
            self.on_refused("bad_request", None)
            self._respond(sid, 400)
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
        task = self.loop.create_task(self._handle(stream, req), name=f"hbone-connect-{sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            return  # the client went away while we decided
        if isinstance(result, Reject):
            self._respond(stream.stream_id, result.status)
            self.flush()
            return
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
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self._server is not None:
            self._server.connections.discard(self)
            self._server = None


class HboneServer:
    """Serves HBONE on one or many listeners; ``protocol_factory`` per accepted connection."""

    def __init__(
        self,
        *,
        context: ssl.SSLContext,
        trust_domain: str,
        handler: StreamHandler,
        events: HboneServerEvents | None = None,
        max_concurrent_streams: int = DEFAULT_MAX_STREAMS,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.context = context
        self.trust_domain = trust_domain
        self.handler = handler
        self.events: HboneServerEvents = events if events is not None else LoggingServerEvents()
        self.max_concurrent_streams = max_concurrent_streams
        self.handshake_timeout = handshake_timeout
        # weak: a protocol whose loop-side TLS handshake failed is never told; let it go
        self.connections: weakref.WeakSet[_ServerConnection] = weakref.WeakSet()
        self._closing = False

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
