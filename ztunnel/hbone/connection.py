"""One HBONE connection: TLS 1.3 (memory BIOs) + HTTP/2, with DATA framed by hand.

Layering, per connection (an ``asyncio.Protocol`` over a plain TCP transport):

* TLS is done here with ``SSLContext.wrap_bio`` so that every handshake failure, including a
  peer that does not speak TLS at all, is seen (and counted) by the server, and so that no
  reference cycle through a loop-owned TLS transport can outlive the connection. If the caller
  created the transport with ``ssl=`` the loop's TLS is used instead (same code above it).
* The ``h2`` library owns the connection preface, SETTINGS, HEADERS/CONTINUATION (HPACK),
  RST_STREAM, PING and GOAWAY, and the stream state machine.
* DATA and WINDOW_UPDATE frames never reach ``h2``: incoming bytes are split into frames here,
  DATA payloads go straight to the stream's protocol and our own flow-control accounting, and
  outgoing DATA frames are written by hand (the ``h2`` library on every DATA frame costs an
  order of magnitude more CPU). ``h2`` still sees END_STREAM: an incoming DATA frame with
  END_STREAM is followed by a synthetic empty DATA frame with END_STREAM fed to ``h2``, and an
  outgoing END_STREAM is sent with ``h2.end_stream()``. Because ``h2`` never sees DATA or
  WINDOW_UPDATE its own windows stay at their initial values and never overflow.

Invariants:

* Every byte for the wire goes through ``_queue()`` in order and leaves in ``_flush()``; the h2
  output buffer is drained into the same queue after each h2 call, so hand-made frames and h2
  frames are never reordered.
* Receive side: a stream may buffer at most its window (``STREAM_WINDOW``) while its reader is
  paused; WINDOW_UPDATEs for a stream are sent only for bytes its protocol has consumed, so a
  paused reader stops the peer (real backpressure). The connection window is credited when bytes
  are delivered or dropped.
* Send side: DATA leaves only within both peer windows and while the TCP transport is not paused;
  the rest waits in the stream's pending buffer, and the stream's protocol is paused above
  ``WRITE_HIGH`` and resumed below ``WRITE_LOW``.
* ``connection_lost`` fails every stream and clears every reference (streams, h2, TLS objects,
  transport) so no cycle keeps a closed connection alive.

Bounds against a hostile peer (both sides; :class:`ConnectionLimits`, each refusal counted through
``on_protocol_error(reason)`` with a reason from the server's ``REFUSAL_REASONS``):

* Write side: once the bytes queued for the peer (the TCP transport's write buffer) pass
  ``max_write_buffer`` the connection is aborted (``write_buffer_full``). DATA never leaves while
  the transport is paused, so only answers the peer asked for and does not read (PING and
  SETTINGS ACKs, RST_STREAMs) can grow it.
* Header blocks are bounded in our own framing, before ``h2`` buffers the fragments: at most
  ``max_header_block`` raw bytes (HEADERS/PUSH_PROMISE plus CONTINUATIONs) and
  ``max_continuations`` CONTINUATION frames per block; the decoded list is bounded by
  ``MAX_HEADER_LIST`` (hpack's decoder, set before our SETTINGS are acknowledged).
* Frames that cost CPU without progress (DATA without payload or END_STREAM, PRIORITY, unknown
  frame types) and control frames that need an answer (PING, SETTINGS) each have a budget per
  ``abuse_window`` seconds; over it the peer gets GOAWAY ENHANCE_YOUR_CALM.
* Every check is O(1) per frame, and none touches DATA payload bytes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshapi.ids import SpiffeId
from ztunnel.errors import HboneStreamError, HboneUnprocessed, TlsIdentityError
from ztunnel.tls import peer_identity

log = logging.getLogger(__name__)

# frame types and flags (RFC 9113 section 6)
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
FLAG_ACK = 0x1
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
#: per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE)
STREAM_WINDOW = 4 * 1024 * 1024
#: connection receive window (raised from 65535 by a WINDOW_UPDATE right after SETTINGS)
CONNECTION_WINDOW = 16 * 1024 * 1024
#: SETTINGS_MAX_FRAME_SIZE we accept; we send DATA frames up to the peer's value, capped here
MAX_FRAME = 256 * 1024
MAX_HEADER_LIST = 16 * 1024
DEFAULT_MAX_STREAMS = 100
#: TLS plaintext read per SSLObject.read() call
READ_SIZE = 256 * 1024
#: a stream's pending (not yet windowed) bytes above which its producer is paused
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024
#: TCP transport write buffer limits (TLS records waiting for the kernel)
TRANSPORT_HIGH = 1024 * 1024
TRANSPORT_LOW = 256 * 1024

# --- bounds against a hostile peer (ConnectionLimits' defaults) ---------------------------
#: bytes queued for a peer (TCP write buffer) above which it is cut off: the transport pauses
#: DATA at TRANSPORT_HIGH, so only unread answers (PING/SETTINGS ACKs, RST_STREAM) pass this
MAX_WRITE_BUFFER = 4 * 1024 * 1024
#: raw (HPACK-encoded) bytes of one header block; HPACK never makes a block much larger than
#: the decoded list it carries, so twice MAX_HEADER_LIST leaves room for padding and priority
MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST
#: CONTINUATION frames in one header block (our CONNECT fits in one HEADERS frame)
MAX_CONTINUATIONS = 16
#: the window, in seconds, of the per-connection budgets below
ABUSE_WINDOW = 10.0
#: frames without progress per window: DATA with neither payload nor END_STREAM, PRIORITY,
#: unknown frame types, empty CONTINUATION
MAX_EMPTY_FRAMES = 1000
#: PING and SETTINGS frames (each needs an answer) per window
MAX_CONTROL_FRAMES = 1000
#: RST_STREAM from the peer per window (server side)
MAX_PEER_RESETS = 1000
#: streams the peer reset before their handler answered, plus streams refused because handlers
#: of reset streams still held the slots, per window (server side: "Rapid Reset")
MAX_PREMATURE_RESETS = 100
#: seconds between TLS and the end of the client preface + first SETTINGS (server side)
PREFACE_TIMEOUT = 5.0
#: seconds a server connection may stay without streams before GOAWAY (above the pool's 60 s)
IDLE_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection bounds against a hostile peer (see the module docstring)."""

    max_write_buffer: int = MAX_WRITE_BUFFER
    max_header_block: int = MAX_HEADER_BLOCK
    max_continuations: int = MAX_CONTINUATIONS
    max_empty_frames: int = MAX_EMPTY_FRAMES
    max_control_frames: int = MAX_CONTROL_FRAMES
    max_peer_resets: int = MAX_PEER_RESETS
    max_premature_resets: int = MAX_PREMATURE_RESETS
    abuse_window: float = ABUSE_WINDOW
    preface_timeout: float = PREFACE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


class Budget:
    """At most ``limit`` events per ``window`` seconds (a fixed window: O(1), no timer)."""

    __slots__ = ("count", "limit", "start", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.count = 0
        self.start = -window

    def spend(self, now: float) -> bool:
        """Count one event at ``now``; True when the budget is exceeded."""
        if now - self.start >= self.window:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


def _frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return (
        length.to_bytes(3, "big") + bytes((ftype, flags)) + stream_id.to_bytes(4, "big")
    )


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return _frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def _empty_end_stream(stream_id: int) -> bytes:
    return _frame_header(0, DATA, FLAG_END_STREAM, stream_id)


class HboneStream(asyncio.Transport):
    """One CONNECT stream as an asyncio transport (the tunnelled TCP connection)."""

    def __init__(self, conn: HboneConnection, stream_id: int) -> None:
        super().__init__()
        self._conn: HboneConnection | None = conn
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        # send side
        self.send_window = conn.peer_initial_window
        self._pending: collections.deque[memoryview] = collections.deque()
        self.pending_size = 0
        self._write_paused = False
        self._high = WRITE_HIGH
        self._low = WRITE_LOW
        self.local_ended = False
        self._eof_pending = False
        self._close_pending = False
        # receive side
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        self.remote_ended = False
        self._reading_paused = False
        self._rbuf: collections.deque[bytes] = collections.deque()
        self._rbuf_eof = False
        self._closing = False
        self._done = False
        self._lost_exc: Exception | None = None
        #: client side: completed with the response headers
        self.response: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
        #: server side: the :status was sent (a reset before it is "premature")
        self.answered = False
        #: server side: holders of the stream's slot left (its handler, its protocol)
        self.holds = 0
        #: called once, after the protocol's connection_lost ran (or at once without protocol)
        self.on_released: Callable[[], None] | None = None

    # --- asyncio.Transport API ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self.stream_id
        conn = self._conn
        return conn.get_info(name, default) if conn is not None else default

    def is_closing(self) -> bool:
        return self._closing or self._done

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_reading(self) -> bool:
        return not self._reading_paused and not self.is_closing()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        conn = self._conn
        if conn is None:
            return
        self._drain_rbuf()
        conn.flush()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high, self._low = high, low
        self._update_write_pause()

    def get_write_buffer_size(self) -> int:
        return self.pending_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        conn = self._conn
        if self._done or self._closing or self._eof_pending or self.local_ended or conn is None:
            return  # like asyncio: writes after close are dropped
        if not data:
            return
        view = memoryview(data).cast("B")
        if not self._pending:
            sent = conn.send_data(self, view)
            if sent == len(view):
                conn.flush()
                return
            view = view[sent:]
        if isinstance(data, bytes):
            self._pending.append(view)
        else:
            self._pending.append(memoryview(bytes(view)))  # the caller may reuse its buffer
        self.pending_size += len(view)
        conn.blocked.add(self)
        self._update_write_pause()
        conn.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._done or self._eof_pending or self.local_ended or self._conn is None:
            return
        self._eof_pending = True
        if not self._pending:
            conn = self._conn
            conn.end_stream(self)
            conn.flush()

    def close(self) -> None:
        if self._closing or self._done:
            return
        self._closing = True
        self._rbuf.clear()
        self._close_pending = True
        conn = self._conn
        if conn is not None and not self._pending:
            conn.finish_close(self)
            conn.flush()  # conn is a local: finish_close drops self._conn

    def abort(self) -> None:
        conn = self._conn
        if self._done or conn is None:
            return
        conn.reset_stream(self, h2.errors.ErrorCodes.CANCEL)
        conn.flush()
        self.lost(None)

    # --- called by the connection ---------------------------------------------------------

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Start delivering to ``protocol`` (after the CONNECT exchange). A stream that was
        lost in between (the 200 and a reset or the connection's end arrived in one read) still
        gives the protocol its ``connection_lost``, so nobody waits on a dead stream."""
        if self._done:
            protocol.connection_made(self)
            asyncio.get_running_loop().call_soon(_deliver_lost, protocol, self._lost_exc, None)
            return
        self._protocol = protocol
        protocol.connection_made(self)
        if self._conn is not None:
            self._drain_rbuf()

    def received(self, data: bytes) -> None:
        if self._closing:
            assert self._conn is not None
            self._conn.consumed(self, len(data))
            return
        if self._reading_paused or self._protocol is None or self._rbuf:
            self._rbuf.append(data)
            return
        assert self._conn is not None
        self._conn.consumed(self, len(data))
        self._call(self._protocol.data_received, data)  # type: ignore[attr-defined]

    def remote_end(self) -> None:
        self.remote_ended = True
        if self._closing:
            self._maybe_done()
            return
        if self._reading_paused or self._protocol is None or self._rbuf:
            self._rbuf_eof = True
            return
        self._deliver_eof()

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run a protocol callback; a failing protocol aborts its stream, never the connection."""
        try:
            return fn(*args)
        except Exception:
            log.exception("HBONE stream %d: protocol callback failed; resetting the stream",
                          self.stream_id)
            self.abort()
            return None

    def _deliver_eof(self) -> None:
        assert self._protocol is not None
        keep_open = self._call(self._protocol.eof_received)  # type: ignore[attr-defined]
        if self._done:
            return
        if not keep_open:
            self.close()
        else:
            self._maybe_done()

    def _drain_rbuf(self) -> None:
        while self._rbuf and not self._reading_paused and self._protocol is not None:
            data = self._rbuf.popleft()
            if self._conn is None:
                return
            self._conn.consumed(self, len(data))
            if self._closing:
                continue
            self._call(self._protocol.data_received, data)  # type: ignore[attr-defined]
        if (
            self._rbuf_eof
            and not self._rbuf
            and not self._reading_paused
            and self._protocol is not None
        ):
            self._rbuf_eof = False
            self._deliver_eof()

    def flush_pending(self, conn: HboneConnection) -> bool:
        """Send what the windows allow; True when nothing is left pending."""
        while self._pending:
            view = self._pending[0]
            sent = conn.send_data(self, view)
            self.pending_size -= sent
            if sent < len(view):
                self._pending[0] = view[sent:]
                self._update_write_pause()
                return False
            self._pending.popleft()
        self._update_write_pause()
        if self._eof_pending and not self.local_ended:
            conn.end_stream(self)
        if self._close_pending:
            conn.finish_close(self)
        return True

    def _update_write_pause(self) -> None:
        proto = self._protocol
        if proto is None or self._done:
            return
        if not self._write_paused and self.pending_size > self._high:
            self._write_paused = True
            proto.pause_writing()
        elif self._write_paused and self.pending_size <= self._low:
            self._write_paused = False
            proto.resume_writing()

    def _maybe_done(self) -> None:
        if self.local_ended and self.remote_ended and not self._pending:
            self.lost(None)

    def lost(self, exc: Exception | None) -> None:
        """The stream is over: tell the protocol once and drop every reference."""
        if self._done:
            return
        self._done = True
        self._closing = True
        self._lost_exc = exc
        conn = self._conn
        if conn is not None:
            conn.forget(self)
        if self.response is not None and not self.response.done():
            self.response.set_exception(exc or HboneStreamError("HBONE stream closed"))
        self._pending.clear()
        self.pending_size = 0
        self._rbuf.clear()
        proto = self._protocol
        release, self.on_released = self.on_released, None
        if proto is not None and conn is not None:
            conn.loop.call_soon(_deliver_lost, proto, exc, release)
        elif release is not None:
            release()
        self._protocol = None
        self._conn = None


def _deliver_lost(
    proto: asyncio.BaseProtocol, exc: Exception | None, release: Callable[[], None] | None
) -> None:
    try:
        proto.connection_lost(exc)
    finally:
        if release is not None:
            release()


class HboneConnection(asyncio.Protocol):
    """TLS + HTTP/2 for one HBONE connection; subclassed by the client and server sides."""

    server_side = False

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        max_concurrent_streams: int = DEFAULT_MAX_STREAMS,
        handshake_timeout: float = 10.0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limits = limits = limits if limits is not None else ConnectionLimits()
        self._context: ssl.SSLContext | None = context
        self._handshake_timeout = handshake_timeout
        self._max_streams = max_concurrent_streams
        self._transport: asyncio.Transport | None = None
        self._sslobj: ssl.SSLObject | None = None
        self._in_bio: ssl.MemoryBIO | None = None
        self._out_bio: ssl.MemoryBIO | None = None
        self._loop_tls = False
        self._handshaken = False
        self._seen_bytes = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.peername: tuple[str, int] | None = None
        self.sockname: tuple[str, int] | None = None
        self.identity: SpiffeId | None = None
        self.tls_version: str | None = None
        self.closed = False
        # HTTP/2
        config = h2.config.H2Configuration(
            client_side=not self.server_side,
            header_encoding=None,
            validate_inbound_headers=False,  # the server validates CONNECT itself (answers 400)
        )
        self.h2: h2.connection.H2Connection | None = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=not self.server_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.max_inbound_frame_size = MAX_FRAME
        # hpack applies our MAX_HEADER_LIST_SIZE only once the peer ACKs our SETTINGS
        self.h2.decoder.max_header_list_size = MAX_HEADER_LIST
        self._preface_left = len(PREFACE) if self.server_side else 0
        #: the peer's first frame (its SETTINGS) has not been parsed yet
        self._awaiting_settings = True
        self._rbuf = bytearray()
        self._expect_continuation = False
        self._header_block = 0
        self._continuations = 0
        self._empty_budget = Budget(limits.max_empty_frames, limits.abuse_window)
        self._control_budget = Budget(limits.max_control_frames, limits.abuse_window)
        self._wbuf: list[bytes | memoryview] = []
        self._transport_paused = False
        self.streams: dict[int, HboneStream] = {}
        self.blocked: set[HboneStream] = set()
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.peer_max_streams = DEFAULT_MAX_STREAMS
        self.send_window = 65535
        self.recv_window = CONNECTION_WINDOW
        self._recv_unacked = 0
        self.goaway_received = False
        self.lost_event = asyncio.Event()

    # --- information ----------------------------------------------------------------------

    def get_info(self, name: str, default: Any = None) -> Any:
        if name == "peer_identity":
            return self.identity
        if name == "tls_version":
            return self.tls_version
        if name == "peername":
            return self.peername
        if name == "sockname":
            return self.sockname
        return default

    # --- hooks for the sides -------------------------------------------------------------

    def check_peer(self, identity: SpiffeId) -> None:
        """Raise TlsIdentityError (or a subclass-specific error) to refuse the peer."""

    def on_ready(self) -> None:
        """TLS established, peer accepted, HTTP/2 preface sent."""

    def on_refused(self, reason: str, exc: BaseException | None, detail: str = "") -> None:
        """The peer was refused before HTTP/2 (TLS, identity, caps)."""

    def on_protocol_error(self, reason: str, detail: str = "") -> None:
        """The peer broke HTTP/2 or a limit; the connection is being closed."""

    def on_settings_received(self) -> None:
        """The peer's connection preface and first SETTINGS frame arrived."""

    def on_peer_reset(self, stream: HboneStream | None) -> None:
        """The peer sent RST_STREAM (``stream`` None: one we had forgotten already)."""

    def on_event(self, event: Any) -> None:
        """An h2 event not handled by the common code (requests, responses)."""

    def on_lost(self, exc: Exception | None) -> None:
        """After connection_lost has failed every stream."""

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones
        transport = cast(asyncio.Transport, transport)
        if self.closed:
            transport.abort()
            return
        self._transport = transport
        transport.set_write_buffer_limits(TRANSPORT_HIGH, TRANSPORT_LOW)
        peer = transport.get_extra_info("peername")
        self.peername = (peer[0], peer[1]) if peer else None
        sock = transport.get_extra_info("sockname")
        self.sockname = (sock[0], sock[1]) if sock else None
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            # the loop did the TLS handshake (create_server/create_connection with ssl=)
            self._loop_tls = True
            self._sslobj = sslobj
            self._tls_established()
            return
        assert self._context is not None
        self._in_bio = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._sslobj = self._context.wrap_bio(
            self._in_bio, self._out_bio, server_side=self.server_side
        )
        self._handshake_timer = self.loop.call_later(
            self._handshake_timeout, self._on_handshake_timeout
        )
        if not self.server_side:
            self._do_handshake()

    def _on_handshake_timeout(self) -> None:
        self._handshake_timer = None
        if not self._handshaken and not self.closed:
            self.on_refused("tls_handshake_timeout", None)
            self.abort()

    def _do_handshake(self) -> None:
        assert self._sslobj is not None and self._out_bio is not None
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._flush_tls()
            reason = getattr(exc, "reason", None) or "tls_handshake"
            self.on_refused(_tls_reason(str(reason)), exc)
            self.close_transport()
            return
        self._flush_tls()
        self._tls_established()

    def _tls_established(self) -> None:
        assert self._sslobj is not None
        self._handshaken = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.tls_version = self._sslobj.version()
        if self._sslobj.selected_alpn_protocol() != "h2":
            self.on_refused("alpn", None)
            self.close_transport()
            return
        try:
            self.identity = peer_identity(self._sslobj)
            self.check_peer(self.identity)
        except TlsIdentityError as exc:
            self.on_refused("identity", exc)
            self.close_transport()
            return
        except Exception as exc:  # subclass-specific refusal (e.g. HboneIdentityError)
            self.on_refused("identity", exc)
            self.close_transport()
            return
        assert self.h2 is not None
        self.h2.initiate_connection()
        self._drain_h2()
        self._queue(window_update_frame(0, CONNECTION_WINDOW - 65535))
        self.flush()
        self.on_ready()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._loop_tls:
            self._h2_bytes(data)
            self.flush()
            return
        assert self._in_bio is not None and self._sslobj is not None
        if not self._seen_bytes and data:
            self._seen_bytes = True
            if self.server_side and data[0] != 0x16:  # not a TLS handshake record
                self.on_refused("not_tls", None)
                self.abort()
                return
        self._in_bio.write(data)
        if not self._handshaken:
            self._do_handshake()
            if not self._handshaken or self.closed:
                return
        sslobj = self._sslobj
        while not self.closed:
            try:
                chunk = sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof_received()
                break
            except (ssl.SSLError, OSError) as exc:
                log.debug("HBONE TLS error from %s: %s", self.peername, exc)
                self.on_protocol_error("tls")
                self.abort(exc)
                return
            if not chunk:  # close_notify (the ssl module returns b"" instead of raising)
                self.eof_received()
                break
            self._h2_bytes(chunk)
        self._flush_tls()
        self.flush()

    def eof_received(self) -> bool | None:
        # TCP FIN or TLS close_notify: HTTP/2 has no half-close; close everything.
        self.close_transport()
        return False

    def pause_writing(self) -> None:
        self._transport_paused = True

    def resume_writing(self) -> None:
        self._transport_paused = False
        self._flush_blocked()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.closed = True
        err = HboneStreamError(
            f"HBONE connection to {self.peername} lost"
            + (f": {exc}" if exc else "")
        )
        for stream in list(self.streams.values()):
            stream.lost(err)
        self.streams.clear()
        self.blocked.clear()
        self.on_lost(exc)
        self.lost_event.set()
        # break every cycle (KERNEL-NOTES: transports and protocols referencing each other)
        self._transport = None
        self._sslobj = None
        self._in_bio = None
        self._out_bio = None
        self._context = None
        self.h2 = None
        self._wbuf.clear()
        self._rbuf = bytearray()

    # --- output ---------------------------------------------------------------------------

    def _queue(self, data: bytes | memoryview) -> None:
        self._wbuf.append(data)

    def _drain_h2(self) -> None:
        if self.h2 is not None:
            out = self.h2.data_to_send()
            if out:
                self._wbuf.append(out)

    def flush(self) -> None:
        """Write everything queued to the transport (through TLS unless the loop does it)."""
        if not self._wbuf:
            return
        transport = self._transport
        if transport is None or self.closed:
            self._wbuf.clear()
            return
        data = b"".join(self._wbuf) if len(self._wbuf) > 1 else bytes(self._wbuf[0])
        self._wbuf.clear()
        if self._loop_tls:
            transport.write(data)
            self._check_write_buffer(transport)
            return
        sslobj = self._sslobj
        assert sslobj is not None
        view = memoryview(data)
        try:
            while view:
                n = sslobj.write(view)
                view = view[n:]
        except (ssl.SSLError, OSError) as exc:
            self.abort(exc)
            return
        self._flush_tls()

    def _flush_tls(self) -> None:
        transport = self._transport
        if self._out_bio is not None and self._out_bio.pending and transport is not None:
            transport.write(self._out_bio.read())
            self._check_write_buffer(transport)

    def _check_write_buffer(self, transport: asyncio.Transport) -> None:
        queued = transport.get_write_buffer_size()
        if queued > self.limits.max_write_buffer and not self.closed:
            self.on_protocol_error(
                "write_buffer_full",
                f"{queued} bytes queued for a peer that does not read (bound "
                f"{self.limits.max_write_buffer}); answers to its PING/SETTINGS/RST_STREAM?",
            )
            self.abort()

    def refuse_connection(self, reason: str, detail: str, code: int) -> None:
        """A limit was exceeded: GOAWAY ``code``, count ``reason``, close this connection only.
        A peer that does not read its GOAWAY is aborted instead of waited for."""
        if self.closed:
            return
        log.debug("HBONE peer %s: %s", self.peername, detail)
        self.goaway(code)
        if self.closed:
            return  # the GOAWAY itself overflowed the write bound
        self.on_protocol_error(reason, detail)
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            self.abort()
        else:
            self.close_transport()

    def close_transport(self) -> None:
        if self.closed:
            return
        self.flush()
        if self._sslobj is not None and not self._loop_tls and self._handshaken:
            try:
                self._sslobj.unwrap()
            except (ssl.SSLError, OSError):
                pass
            self._flush_tls()
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self, exc: BaseException | None = None) -> None:
        self.closed = True
        if self._transport is None:
            self.lost_event.set()
        else:
            self._transport.abort()

    async def wait_closed(self) -> None:
        if self._transport is None and not self.closed:
            return  # never connected
        await self.lost_event.wait()

    def goaway(self, error_code: int = 0) -> None:
        """Send GOAWAY (no new streams) without closing."""
        if self.h2 is None or self.closed or not self._handshaken:
            return
        try:
            self.h2.close_connection(error_code)
        except h2.exceptions.ProtocolError:
            return
        self._drain_h2()
        self.flush()

    # --- input ----------------------------------------------------------------------------

    def _h2_bytes(self, data: bytes) -> None:
        buf = self._rbuf
        buf += data
        pos = 0
        if self._preface_left:
            take = min(self._preface_left, len(buf))
            want = PREFACE[len(PREFACE) - self._preface_left :][:take]
            if bytes(buf[:take]) != want:
                self._protocol_error("bad connection preface", h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            self._preface_left -= take
            pos = take
            if self._preface_left == 0:
                self._feed_h2(PREFACE)
        n = len(buf)
        while n - pos >= 9 and not self.closed:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            if length > MAX_FRAME:
                self._protocol_error(
                    f"frame of {length} bytes exceeds our SETTINGS_MAX_FRAME_SIZE",
                    h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
                )
                return
            end = pos + 9 + length
            if end > n:
                break
            if self._expect_continuation or (ftype != DATA and ftype != WINDOW_UPDATE):
                if self._awaiting_settings:
                    # h2 refuses any first frame but SETTINGS (a connection error)
                    self._awaiting_settings = False
                    if ftype == SETTINGS:
                        self.on_settings_received()
                if ftype == CONTINUATION or ftype == HEADERS or ftype == PUSH_PROMISE:
                    if ftype == CONTINUATION:
                        self._header_block += length
                        self._continuations += 1
                    else:
                        self._header_block = length
                        self._continuations = 0
                    self._expect_continuation = not flags & FLAG_END_HEADERS
                    if not self._check_header_block(ftype, length):
                        return
                    if ftype == HEADERS and not self._check_stream(buf, pos, "HEADERS"):
                        return
                else:
                    self._expect_continuation = False
                    if not self._check_frame(ftype, flags):
                        return
                    if ftype == RST_STREAM and not self._check_stream(buf, pos, "RST_STREAM"):
                        return
                self._feed_h2(bytes(buf[pos:end]))
            else:
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                if ftype == DATA:
                    self._on_data(sid, flags, buf, pos + 9, length)
                else:
                    self._on_window_update(sid, buf, pos + 9, length)
            pos = end
        if self.closed:
            return
        if pos:
            del buf[:pos]

    def _check_header_block(self, ftype: int, length: int) -> bool:
        """Bound a header block before h2 buffers it; False when the connection is refused."""
        limits = self.limits
        if self._header_block > limits.max_header_block:
            self.refuse_connection(
                "header_block_too_large",
                f"header block of {self._header_block}+ bytes (bound {limits.max_header_block})",
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
            )
            return False
        if self._continuations > limits.max_continuations:
            self.refuse_connection(
                "continuation_flood",
                f"{self._continuations} CONTINUATION frames in one header block (bound "
                f"{limits.max_continuations})",
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
            )
            return False
        if ftype == CONTINUATION and length == 0 and self._expect_continuation:
            return self._spend_empty("empty CONTINUATION frames")
        return True

    def _check_stream(self, buf: bytearray, pos: int, what: str) -> bool:
        """A HEADERS or RST_STREAM for a stream already closed is answered (h2 sends
        RST_STREAM) or ignored, but costs h2's work: budget it like an empty frame."""
        sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        h2c = self.h2
        if sid in self.streams or h2c is None:
            return True
        if sid > max(h2c.highest_inbound_stream_id, h2c.highest_outbound_stream_id):
            return True  # a new stream (or an idle one, which h2 refuses)
        return self._spend_empty(f"{what} on closed streams")

    def _check_frame(self, ftype: int, flags: int) -> bool:
        """Budgets of a control frame given to h2; False when the connection is refused."""
        if ftype == PING or ftype == SETTINGS:
            if flags & FLAG_ACK:
                return True
            if self._control_budget.spend(self.loop.time()):
                self.refuse_connection(
                    "control_flood",
                    f"more than {self.limits.max_control_frames} PING/SETTINGS frames in "
                    f"{self.limits.abuse_window}s",
                    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                )
                return False
            return True
        if ftype == PRIORITY or ftype > CONTINUATION:
            return self._spend_empty("PRIORITY or unknown frames")
        return True

    def _spend_empty(self, what: str) -> bool:
        if self._empty_budget.spend(self.loop.time()):
            self.refuse_connection(
                "empty_frames",
                f"more than {self.limits.max_empty_frames} frames without progress ({what}) in "
                f"{self.limits.abuse_window}s",
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
            )
            return False
        return True

    def _feed_h2(self, frame: bytes) -> None:
        if self.h2 is None:
            return
        try:
            events = self.h2.receive_data(frame)
        except h2.exceptions.TooManyStreamsError:
            self._drain_h2()
            self.on_protocol_error("too_many_streams", "more streams than SETTINGS allow")
            self.close_transport()
            return
        except h2.exceptions.DenialOfServiceError as exc:
            self._drain_h2()  # h2 queued a GOAWAY
            self.on_protocol_error("header_list_too_large", str(exc))
            self.close_transport()
            return
        except h2.exceptions.ProtocolError as exc:
            self._drain_h2()  # h2 queued a GOAWAY
            log.debug("HBONE protocol error from %s: %s", self.peername, exc)
            self.on_protocol_error("protocol_error", str(exc))
            self.close_transport()
            return
        self._drain_h2()
        for event in events:
            if self.closed:
                return
            self._on_h2_event(event)

    def _protocol_error(self, message: str, code: int) -> None:
        log.debug("HBONE protocol error from %s: %s", self.peername, message)
        self.goaway(code)
        self.on_protocol_error("protocol_error", message)
        self.close_transport()

    def _on_h2_event(self, event: Any) -> None:
        if isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.remote_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                code = event.error_code
                stream.lost(
                    None
                    if code == h2.errors.ErrorCodes.NO_ERROR
                    else HboneStreamError(f"HBONE stream reset by peer ({_code_name(code)})")
                )
            if event.remote_reset:
                self.on_peer_reset(stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._on_settings(event)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            why = f"HBONE peer {self.peername} sent GOAWAY ({_code_name(event.error_code or 0)})"
            for sid, stream in list(self.streams.items()):
                if sid > last:
                    stream.lost(HboneUnprocessed(f"{why}; stream {sid} after its last {last}"))
                elif event.error_code != 0:
                    stream.lost(HboneStreamError(why))
            if event.error_code != 0 or not self.streams:
                self.close_transport()
        elif isinstance(
            event,
            h2.events.DataReceived
            | h2.events.PingReceived
            | h2.events.PingAckReceived
            | h2.events.SettingsAcknowledged
            | h2.events.PriorityUpdated
            | h2.events.UnknownFrameReceived
            | h2.events.WindowUpdated
            | h2.events.TrailersReceived
            | h2.events.InformationalResponseReceived,
        ):
            pass  # PING is answered by h2 itself; the rest needs nothing from us
        else:
            self.on_event(event)

    def _on_settings(self, event: Any) -> None:
        codes = h2.settings.SettingCodes
        changed = event.changed_settings
        if codes.INITIAL_WINDOW_SIZE in changed:
            new = changed[codes.INITIAL_WINDOW_SIZE].new_value
            delta = new - self.peer_initial_window
            if delta > 0 and any(s.send_window + delta > MAX_WINDOW
                                 for s in self.streams.values()):
                # RFC 9113 6.9.2: a stream window past 2^31-1 is a connection error
                self._protocol_error(
                    "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window",
                    h2.errors.ErrorCodes.FLOW_CONTROL_ERROR,
                )
                return
            self.peer_initial_window = new
            for stream in self.streams.values():
                stream.send_window += delta
        if codes.MAX_FRAME_SIZE in changed:
            self.peer_max_frame = changed[codes.MAX_FRAME_SIZE].new_value
        if codes.MAX_CONCURRENT_STREAMS in changed:
            self.peer_max_streams = changed[codes.MAX_CONCURRENT_STREAMS].new_value
        self._flush_blocked()

    def _on_data(self, sid: int, flags: int, buf: bytearray, start: int, length: int) -> None:
        if length > self.recv_window:
            self._protocol_error(
                "peer overran the connection window", h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
            )
            return
        self.recv_window -= length
        stream = self.streams.get(sid)
        if stream is None or stream.remote_ended:
            # closed, reset or never opened: credit the connection, refuse the stream
            self._credit_connection(length)
            h2c = self.h2
            if sid == 0 or h2c is None:
                self._protocol_error("DATA on stream 0", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            elif sid > max(h2c.highest_inbound_stream_id, h2c.highest_outbound_stream_id):
                # RFC 9113 5.1: DATA on an idle stream is a connection error
                self._protocol_error("DATA on an idle stream", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            elif length == 0 and not self._spend_empty("empty DATA frames on closed streams"):
                return
            else:
                self._queue(
                    _frame_header(4, RST_STREAM, 0, sid)
                    + int(h2.errors.ErrorCodes.STREAM_CLOSED).to_bytes(4, "big")
                )
            return
        if length > stream.recv_window:
            self._credit_connection(length)
            self.reset_stream(stream, h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
            stream.lost(HboneStreamError("HBONE peer overran the stream window"))
            return
        stream.recv_window -= length
        pstart, pend = start, start + length
        if flags & FLAG_PADDED:
            if length < 1 or buf[start] >= length:
                self._protocol_error("bad DATA padding", h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            pad = buf[start]
            pstart += 1
            pend -= pad
            self._credit_connection(1 + pad)
            stream.recv_window += 1 + pad  # padding is consumed at once
            stream.recv_unacked += 1 + pad
        if pend > pstart:
            stream.received(bytes(buf[pstart:pend]))
        elif not flags & FLAG_END_STREAM and not self._spend_empty("empty DATA frames"):
            return
        if flags & FLAG_END_STREAM:
            self._feed_h2(_empty_end_stream(sid))

    def _on_window_update(self, sid: int, buf: bytearray, start: int, length: int) -> None:
        if length != 4:
            self._protocol_error("WINDOW_UPDATE of bad size", h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            return
        inc = int.from_bytes(buf[start : start + 4], "big") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0 or self.send_window + inc > MAX_WINDOW:
                self._protocol_error(
                    "bad connection WINDOW_UPDATE", h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
                )
                return
            self.send_window += inc
        else:
            stream = self.streams.get(sid)
            if stream is None:
                self._spend_empty("WINDOW_UPDATE on closed streams")
                return
            if inc == 0 or stream.send_window + inc > MAX_WINDOW:
                self.reset_stream(stream, h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
                stream.lost(HboneStreamError("HBONE peer sent a bad WINDOW_UPDATE"))
                return
            stream.send_window += inc
        self._flush_blocked()

    # --- flow control -----------------------------------------------------------------------

    def _credit_connection(self, n: int) -> None:
        self._recv_unacked += n
        if self._recv_unacked >= CONNECTION_WINDOW // 4:
            self._queue(window_update_frame(0, self._recv_unacked))
            self.recv_window += self._recv_unacked
            self._recv_unacked = 0

    def consumed(self, stream: HboneStream, n: int) -> None:
        """``n`` bytes of ``stream`` were delivered to (or dropped for) its protocol."""
        self._credit_connection(n)
        stream.recv_unacked += n
        if stream.recv_unacked >= STREAM_WINDOW // 4 and not stream.remote_ended:
            self._queue(window_update_frame(stream.stream_id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def send_data(self, stream: HboneStream, view: memoryview) -> int:
        """Frame as much of ``view`` as the windows allow; returns the bytes taken."""
        if self._transport_paused or self.closed:
            return 0
        total = 0
        remaining = len(view)
        max_frame = min(self.peer_max_frame, MAX_FRAME)
        while remaining:
            n = min(remaining, stream.send_window, self.send_window, max_frame)
            if n <= 0:
                break
            self._wbuf.append(_frame_header(n, DATA, 0, stream.stream_id))
            self._wbuf.append(view[total : total + n])
            stream.send_window -= n
            self.send_window -= n
            total += n
            remaining -= n
        return total

    def _flush_blocked(self) -> None:
        if not self.blocked or self._transport_paused:
            return
        for stream in list(self.blocked):
            if self.send_window <= 0 or self._transport_paused:
                break
            if stream.flush_pending(self):
                self.blocked.discard(stream)

    # --- stream operations --------------------------------------------------------------

    def end_stream(self, stream: HboneStream) -> None:
        if stream.local_ended or self.h2 is None or self.closed:
            return
        stream.local_ended = True
        try:
            self.h2.end_stream(stream.stream_id)
        except h2.exceptions.ProtocolError:
            pass  # already reset or closed by the peer
        self._drain_h2()
        stream._maybe_done()

    def finish_close(self, stream: HboneStream) -> None:
        """close(): END_STREAM after pending data, then reset if the peer still sends."""
        if not stream.local_ended:
            self.end_stream(stream)
        if not stream.remote_ended:
            self.reset_stream(stream, h2.errors.ErrorCodes.NO_ERROR)
        stream.lost(None)

    def reset_stream(self, stream: HboneStream, code: int) -> None:
        if self.h2 is None or self.closed:
            return
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except (h2.exceptions.ProtocolError, KeyError):
            pass  # already closed in h2
        self._drain_h2()

    def forget(self, stream: HboneStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self.blocked.discard(stream)
        self.on_stream_closed()

    def on_stream_closed(self) -> None:
        """A stream left ``self.streams``."""

    def send_headers(
        self, stream_id: int, headers: Sequence[tuple[str, str]], end_stream: bool = False
    ) -> None:
        assert self.h2 is not None
        self.h2.send_headers(stream_id, list(headers), end_stream=end_stream)
        self._drain_h2()


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


def _tls_reason(reason: str) -> str:
    r = reason.upper()
    if "CERTIFICATE_REQUIRED" in r or "PEER_DID_NOT_RETURN" in r or "NO_CERTIFICATE" in r:
        return "no_client_cert"
    if "CERTIFICATE_VERIFY_FAILED" in r or "UNKNOWN_CA" in r or "BAD_CERTIFICATE" in r:
        return "bad_cert_chain"
    if "WRONG_VERSION" in r or "HTTP_REQUEST" in r or "UNEXPECTED_RECORD" in r:
        return "not_tls"
    return "tls_handshake"

