"""The HBONE client: a pool of mutual-TLS HTTP/2 connections, one CONNECT stream per proxied
TCP connection.

Invariants (the pool):

* Connections are keyed by (source identity, destination identity, peer address). A connection
  is pooled only after its TLS handshake verified the chain and the server's SPIFFE id equals the
  expected destination; on a mismatch the connection is closed and HboneIdentityError raised.
* For one key at most one connection is being established at a time, so a burst of streams to a
  new destination makes one TLS handshake, not one per stream.
* A connection carries at most ``max_streams_per_connection`` streams (and no more than the
  server's SETTINGS_MAX_CONCURRENT_STREAMS); beyond that a new connection is opened.
* A connection that received GOAWAY or is closing takes no new streams; a CONNECT that the
  GOAWAY says the server never saw (a higher stream id than its last) is sent once more, on
  another connection. A connection without streams for
  ``idle_timeout`` is closed. When a connection dies every stream on it gets
  ``connection_lost(HboneStreamError)``.
* Each connection holds a reference on its source certificate (``CertificateStore.acquire``)
  and gives it back when it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import h2.events

from meshapi.ids import SpiffeId
from ztunnel.certs import CertificateStore
from ztunnel.errors import (
    CertError,
    HboneConnectError,
    HboneIdentityError,
    HboneStatusError,
    HboneStreamError,
    HboneTimeout,
    HboneUnprocessed,
)
from ztunnel.hbone.connection import HboneConnection, HboneStream

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0

PoolKey = tuple[SpiffeId, SpiffeId, tuple[str, int]]


class _ClientConnection(HboneConnection):
    server_side = False

    def __init__(self, pool: HbonePool, key: PoolKey, context: ssl.SSLContext) -> None:
        super().__init__(context, handshake_timeout=pool.connect_timeout)
        self.key = key
        self._pool: HbonePool | None = pool
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.cert_held = True
        self._idle: asyncio.TimerHandle | None = None

    def check_peer(self, identity: SpiffeId) -> None:
        expected = self.key[1]
        if identity != expected:
            raise HboneIdentityError(
                f"HBONE server {self.key[2][0]}:{self.key[2][1]} presented {identity}, "
                f"expected {expected}; is the workload's address stale or reused?"
            )

    def on_refused(self, reason: str, exc: BaseException | None, detail: str = "") -> None:
        if self.ready.done():
            return
        peer = f"{self.key[2][0]}:{self.key[2][1]}"
        if isinstance(exc, HboneIdentityError):
            self.ready.set_exception(exc)
        elif reason == "identity":
            self.ready.set_exception(HboneIdentityError(f"HBONE server {peer}: {exc}"))
        elif reason == "tls_handshake_timeout":
            self.ready.set_exception(
                HboneTimeout(f"TLS handshake with HBONE server {peer} timed out")
            )
        else:
            self.ready.set_exception(
                HboneConnectError(
                    f"TLS handshake with HBONE server {peer} failed ({reason}): {exc}; "
                    "do both sides trust the same mesh root?"
                )
            )

    def on_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        self._arm_idle()

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.response is not None:
                if not stream.response.done():
                    stream.response.set_result(list(event.headers or []))

    def on_stream_closed(self) -> None:
        if not self.streams:
            self._arm_idle()
        if self.goaway_received and not self.streams:
            self.close_transport()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._pool is not None and not self.closed:
            self._idle = self.loop.call_later(self._pool.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle = None
        if not self.streams and not self.closed:
            log.debug("closing idle HBONE connection to %s", self.key[2])
            self.goaway()
            self.close_transport()

    def on_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.ready.done():
            peer = f"{self.key[2][0]}:{self.key[2][1]}"
            self.ready.set_exception(
                HboneConnectError(
                    f"HBONE connection to {peer} closed during the handshake"
                    + (f": {exc}" if exc else "")
                    + "; does the server accept our certificate (same mesh root)?"
                )
            )
        pool = self._pool
        self._pool = None
        if pool is not None:
            pool._forget(self)

    def usable(self, limit: int) -> bool:
        return (
            self.ready.done()
            and not self.ready.cancelled()
            and self.ready.exception() is None
            and not self.closed
            and not self.goaway_received
            and self.h2 is not None
            and len(self.streams) < min(limit, self.peer_max_streams)
        )

    def start_stream(self, authority: str, headers: Sequence[tuple[str, str]]) -> HboneStream:
        assert self.h2 is not None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        sid = self.h2.get_next_available_stream_id()
        stream = HboneStream(self, sid)
        stream.response = self.loop.create_future()
        self.streams[sid] = stream
        self.send_headers(sid, [(":method", "CONNECT"), (":authority", authority), *headers])
        self.flush()
        return stream


class HbonePool:
    """Pooled, multiplexed HBONE connections."""

    def __init__(
        self,
        certs: CertificateStore,
        *,
        connect_timeout: float = 5.0,
        max_streams_per_connection: int = 100,
        idle_timeout: float = 60.0,
    ) -> None:
        self._certs = certs
        self.connect_timeout = connect_timeout
        self.max_streams_per_connection = max_streams_per_connection
        self.idle_timeout = idle_timeout
        self._conns: dict[PoolKey, list[_ClientConnection]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._closed = False

    def connection_count(self) -> int:
        """Open pooled connections (for the admin endpoint and tests)."""
        return sum(len(v) for v in self._conns.values())

    async def open_stream(
        self,
        *,
        src: SpiffeId,
        dst: SpiffeId,
        peer: tuple[str, int],
        authority: str,
        connect_socket: Callable[[tuple[str, int]], Awaitable[socket.socket]],
        protocol: asyncio.Protocol,
        headers: Sequence[tuple[str, str]] = (),
    ) -> asyncio.Transport:
        if self._closed:
            raise HboneConnectError("HBONE pool is closed")
        key: PoolKey = (src, dst, peer)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        for last_try in (False, True):
            async with lock:
                conn = self._pick(key)
                if conn is None:
                    conn = await self._connect(key, connect_socket)
                stream = conn.start_stream(authority, headers)
            assert stream.response is not None
            try:
                async with asyncio.timeout(self.connect_timeout):
                    resp = await stream.response
                break
            except TimeoutError:
                stream.abort()
                raise HboneTimeout(
                    f"HBONE CONNECT {authority} via {peer[0]}:{peer[1]} got no answer within "
                    f"{self.connect_timeout}s; is the destination's ztunnel overloaded?"
                ) from None
            except HboneUnprocessed as exc:
                # the peer's GOAWAY (its idle close, a drain) crossed our CONNECT and it never
                # saw the stream: once more, on a connection that takes streams
                if last_try:
                    raise HboneConnectError(
                        f"HBONE CONNECT {authority} via {peer[0]}:{peer[1]} failed: {exc}"
                    ) from exc
            except HboneStreamError as exc:
                raise HboneConnectError(
                    f"HBONE CONNECT {authority} via {peer[0]}:{peer[1]} failed: {exc}"
                ) from exc
            except BaseException:
                stream.abort()
                raise
        status = _status(resp)
        if status != 200:
            stream.abort()
            raise HboneStatusError(
                status,
                f"HBONE CONNECT {authority} via {peer[0]}:{peer[1]} answered {status}"
                + (
                    " (denied by the destination's policy)"
                    if status == 401
                    else " (destination unreachable from its ztunnel)"
                    if status == 503
                    else ""
                ),
            )
        stream.attach(protocol)
        return stream

    def _pick(self, key: PoolKey) -> _ClientConnection | None:
        for conn in self._conns.get(key, ()):
            if conn.usable(self.max_streams_per_connection):
                return conn
        return None

    async def _connect(
        self,
        key: PoolKey,
        connect_socket: Callable[[tuple[str, int]], Awaitable[socket.socket]],
    ) -> _ClientConnection:
        src, _dst, peer = key
        where = f"{peer[0]}:{peer[1]}"
        try:
            cert = await self._certs.acquire(src)
        except CertError as exc:
            raise HboneConnectError(f"no certificate for {src}: {exc}") from exc
        loop = asyncio.get_running_loop()
        conn = _ClientConnection(self, key, cert.client_context)
        started = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                try:
                    sock = await connect_socket(peer)
                except OSError as exc:
                    raise HboneConnectError(
                        f"HBONE connect to {where} failed: {exc}; is the destination pod up and "
                        "is port 15008 reachable (NetworkPolicy)?"
                    ) from exc
                try:
                    await loop.create_connection(lambda: conn, sock=sock)
                except OSError as exc:
                    sock.close()
                    raise HboneConnectError(f"HBONE connect to {where} failed: {exc}") from exc
                started = True
                await conn.ready
        except TimeoutError:
            conn.abort()
            if not started:
                self._release(conn)
            raise HboneTimeout(
                f"HBONE connect to {where} timed out after {self.connect_timeout}s; "
                "is a NetworkPolicy blocking 15008?"
            ) from None
        except BaseException:
            conn.abort()
            if not started:
                self._release(conn)
            raise
        self._conns.setdefault(key, []).append(conn)
        return conn

    def _release(self, conn: _ClientConnection) -> None:
        if conn.cert_held:
            conn.cert_held = False
            self._certs.release(conn.key[0])

    def _forget(self, conn: _ClientConnection) -> None:
        conns = self._conns.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]
                lock = self._locks.get(conn.key)
                if lock is not None and not lock.locked():
                    del self._locks[conn.key]
        self._release(conn)

    async def close(self) -> None:
        """GOAWAY and close every connection; their streams see connection_lost."""
        self._closed = True
        conns = [c for cs in self._conns.values() for c in cs]
        for conn in conns:
            conn.goaway()
            conn.close_transport()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.gather(*(c.wait_closed() for c in conns))
        except TimeoutError:
            for conn in conns:
                conn.abort()
        await asyncio.sleep(0)
        for conn in conns:
            self._forget(conn)


def _status(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b":status":
            with contextlib.suppress(ValueError):
                return int(value)
    return 0
