"""Couple two asyncio transports byte for byte: a plain TCP connection and an HBONE stream (or
another TCP connection for passthrough).

Invariants:

* Each side is an :class:`asyncio.Protocol` (:class:`SpliceSide`); bytes read on one side are
  written to the other as they come (no copies beyond what the transports do).
* Backpressure: when a side's transport asks to ``pause_writing``, the *other* side's transport
  stops reading until ``resume_writing``. Buffers are thus bounded by the transports' high-water
  marks.
* A side that is attached before its peer pauses its own reading until the peer attaches. Bytes
  that still arrive meanwhile (uvloop starts reading accepted sockets after ``connection_made``
  even when the protocol paused them there) are held, up to :data:`MAX_EARLY_BYTES`, and written
  first when the peer attaches: nothing is ever dropped.
* Half-close: EOF from one side becomes ``write_eof`` on the other; both transports are closed
  once both directions have ended (or either is lost).
* On ``connection_lost`` each side drops its references to the peer, the transport and the
  splice: uvloop transports and protocols otherwise keep each other alive (KERNEL-NOTES.md).
* ``on_done`` runs exactly once, after both sides are lost (or :meth:`Splice.abort` with no
  attached peer), with the byte counters and the first error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

#: bytes a side may hold while its peer is not attached yet; beyond that the splice is aborted
MAX_EARLY_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class SpliceResult:
    #: bytes read from the downstream side (the connection's client) and written upstream
    downstream_bytes: int
    #: bytes read from the upstream side and written downstream
    upstream_bytes: int
    error: str | None


class SpliceSide(asyncio.Protocol):
    def __init__(self, splice: Splice, name: str) -> None:
        self.splice: Splice | None = splice
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.peer: SpliceSide | None = None
        self.bytes_in = 0
        self.eof = False
        self.lost = False
        #: bytes read before the peer attached, written to the peer when it does
        self.early: list[bytes] = []
        self.early_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.attach(cast(asyncio.Transport, transport))

    def attach(self, transport: asyncio.Transport, *, paused: bool = False) -> None:
        """Idempotent: the HBONE pool returns the stream transport instead of announcing it.
        ``paused``: the caller already paused the transport's reading."""
        if self.transport is transport or self.lost:
            return
        self.transport = transport
        self.reading_paused = paused
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pause_reading()
        else:
            self._flush_early()
            peer.resume_reading()
            self.resume_reading()

    def hold(self, data: bytes) -> bool:
        """Keep bytes read before the splice took over (False: over the bound, abort)."""
        self.early.append(data)
        self.early_bytes += len(data)
        return self.early_bytes <= MAX_EARLY_BYTES

    def _flush_early(self) -> None:
        """Both sides are attached: write what each held to the other, oldest first."""
        peer = self.peer
        assert peer is not None and peer.transport is not None and self.transport is not None
        for src, dst in ((self, peer.transport), (peer, self.transport)):
            if src.early:
                held, src.early, src.early_bytes = src.early, [], 0
                dst.writelines(held)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if not peer.transport.is_closing():
                peer.transport.write(data)
            return
        # the peer is not attached yet: hold the bytes and (again) stop reading
        if not self.hold(data):
            if self.splice is not None:
                self.splice.abort(f"{self.name}: more than {MAX_EARLY_BYTES} bytes before the "
                                  "other side connected")
            return
        self.reading_paused = False
        self.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.eof:
            # both directions have ended: close both (close flushes what is buffered)
            peer.transport.close()
            return False
        t = peer.transport
        if t.can_write_eof() and not t.is_closing():
            t.write_eof()
            return True  # keep our side open to send the other direction
        t.close()
        return False

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def pause_reading(self) -> None:
        t = self.transport
        if t is not None and not self.reading_paused and not t.is_closing():
            self.reading_paused = True
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self.transport
        if t is not None and self.reading_paused and not t.is_closing():
            self.reading_paused = False
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        splice, peer = self.splice, self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        if splice is not None:
            splice._side_lost(self, exc)
        # break the cycles transport <-> protocol <-> peer <-> splice
        self.transport = None
        self.peer = None
        self.splice = None


class Splice:
    """Two :class:`SpliceSide` protocols; give ``downstream``/``upstream`` to the transports."""

    def __init__(self, on_done: Callable[[SpliceResult], None]) -> None:
        self.downstream = SpliceSide(self, "downstream")
        self.upstream = SpliceSide(self, "upstream")
        self.downstream.peer = self.upstream
        self.upstream.peer = self.downstream
        self._on_done: Callable[[SpliceResult], None] | None = on_done
        self._error: str | None = None
        self._lost = 0
        self._down_bytes = 0
        self._up_bytes = 0

    @property
    def bytes_downstream(self) -> int:
        return self._down_bytes + self.downstream.bytes_in

    @property
    def bytes_upstream(self) -> int:
        return self._up_bytes + self.upstream.bytes_in

    def abort(self, reason: str) -> None:
        """Tear down both sides now (RST where possible); ``on_done`` follows."""
        if self._error is None:
            self._error = reason
        attached = 0
        for side in (self.downstream, self.upstream):
            if side.transport is not None and not side.lost:
                attached += 1
                side.transport.abort()
        if attached == 0:
            self._finish()

    def _side_lost(self, side: SpliceSide, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = f"{side.name}: {exc!r}"
        if side is self.downstream:
            self._down_bytes += side.bytes_in
        else:
            self._up_bytes += side.bytes_in
        side.bytes_in = 0
        self._lost += 1
        other = self.upstream if side is self.downstream else self.downstream
        if self._lost >= 2 or other.transport is None:
            self._finish()

    def _finish(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return
        result = SpliceResult(self.bytes_downstream, self.bytes_upstream, self._error)
        # break the splice <-> sides cycle
        self.downstream.splice = self.upstream.splice = None
        self.downstream.peer = self.upstream.peer = None
        on_done(result)

