"""Fuzz targets of the HBONE layer (issue 10): one HBONE connection, server side
(``hbone.server_frames``) or client side (``hbone.client_frames``), driven in one process
through a fake transport on a real event loop.

TLS is not the subject: the transport reports an ``ssl_object`` as a loop's TLS transport
would, so the connection takes its "the loop did TLS" path. The fake ssl object answers only
what ``HboneConnection`` asks (ALPN, version, the peer's DER certificate, a real one issued by
the test CA, read by ``ztunnel.tls.peer_identity`` as in production).

An input is one control byte, then the peer's byte stream (for the server: the client preface,
SETTINGS and frames; for the client: the server's SETTINGS and frames). The control byte:

* bits 0-1: how the stream is cut into reads (whole, 1-byte, 7-byte, 1000-byte pieces);
* bit 2: the stream handler yields to the loop several times before it answers (so resets race
  the handlers);
* bit 3: the accepted streams' protocols pause reading (their receive buffers fill);
* bit 6: no frame budgets (and a smaller write bound): the write bound alone stops a flood;
* bit 7: the peer never reads what it is sent (the transport's buffer only grows).

What each target asserts, for every input: no exception reaches the loop or the caller; the
bytes queued in the transport stay under the connection's write bound (plus what one read can
ask for); the server never holds more stream slots, or more accepted app-side protocols alive,
than ``max_concurrent_streams``; every refusal reason is in ``REFUSAL_REASONS``; when the
connection ends, every accepted protocol got ``connection_lost`` once, the slots and the
listener's connection counts are back to zero, and no task or timer is left behind.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import hpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import strategies as st

from meshapi.ids import SpiffeId
from tests.fuzz.harness import target
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.certs import CertificateStore
from ztunnel.hbone.client import HbonePool, _ClientConnection
from ztunnel.hbone.connection import MAX_WINDOW, PREFACE, READ_SIZE, HboneStream
from ztunnel.hbone.server import REFUSAL_REASONS, Accept, ConnectRequest, HboneServer, Reject

TD = "cluster.local"
CLIENT = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/client")
SERVER = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/server")

_CA = TestCA("hbone fuzz root")


def _der(identity: SpiffeId) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return _CA.issue(key.public_key(), [str(identity)]).public_bytes(serialization.Encoding.DER)


_CLIENT_DER = _der(CLIENT)
_SERVER_DER = _der(SERVER)
#: never used for a handshake (the fake transport reports one done), only stored
_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

#: the limits the fuzzed server runs with: small, so that short inputs reach them
LIMITS: dict[str, Any] = {
    "max_concurrent_streams": 4,
    "max_write_buffer": 64 * 1024,
    "max_header_block": 4096,
    "max_continuations": 4,
    "max_peer_resets": 32,
    "max_premature_resets": 8,
    "max_control_frames": 64,
    "max_empty_frames": 64,
    "preface_timeout": 60.0,
    "idle_timeout": 60.0,
}
#: what one read of the peer may make us queue beyond the write bound (answers are at most a
#: few times the size of what asked for them, plus our own preface)
_SLACK = 4096


class FakeSSLObject:
    """What ``HboneConnection`` and ``ztunnel.tls.peer_identity`` read of an ``SSLObject``."""

    def __init__(self, peer_der: bytes) -> None:
        self._der = peer_der

    def selected_alpn_protocol(self) -> str:
        return "h2"

    def version(self) -> str:
        return "TLSv1.3"

    def getpeercert(self, binary_form: bool = False) -> bytes:
        assert binary_form
        return self._der


class FakeTransport(asyncio.Transport):
    """A TCP transport in memory, after TLS: records writes, pauses its protocol above the
    high-water mark it was given and resumes it when the peer reads (:meth:`drain`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol,
                 peer_der: bytes) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._ssl = FakeSSLObject(peer_der)
        self.buffered = 0
        self.max_buffered = 0
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.closing = False
        self._paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high if high is not None else self.high
        self.low = low if low is not None else self.high // 4

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        self.buffered += len(data)
        self.max_buffered = max(self.max_buffered, self.buffered)
        if self.buffered > self.high and not self._paused:
            self._paused = True
            self._protocol.pause_writing()

    def drain(self) -> None:
        self.buffered = 0
        if self._paused and not self.closing:
            self._paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peername":
            return ("10.0.0.9", 40000)
        if name == "sockname":
            return ("10.0.0.1", 15008)
        return default


class Recorder(asyncio.Protocol):
    """An accepted stream's protocol (the app side): counts what it is told."""

    def __init__(self, live: set[Recorder], pause: bool) -> None:
        """``live`` holds every recorder until its ``connection_lost`` (an open app side)."""
        self.live = live
        self.pause = pause
        self.made = 0
        self.lost = 0
        live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made += 1
        if self.pause:
            assert isinstance(transport, HboneStream)
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1
        self.live.discard(self)


class Events:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def refused(self, reason: str, peer: tuple[str, int] | None, *,
                identity: SpiffeId | None = None, detail: str = "") -> None:
        self.reasons.append(reason)


def pieces(control: int, stream: memoryview) -> list[memoryview]:
    """The peer's bytes as reads: at most READ_SIZE each (what one TLS read returns)."""
    size = (READ_SIZE, 1, 7, 1000)[control & 3]
    size = max(size, len(stream) // 400)  # bound the reads (and loop turns) per input
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def _run(session: Any, data: bytes) -> None:
    loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        loop.run_until_complete(session(loop, data[0], memoryview(data)[1:]))
        loop.run_until_complete(asyncio.sleep(0))
        pending = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
        assert not pending, f"timers left behind: {pending}"
        assert not asyncio.all_tasks(loop), "tasks left behind"
    finally:
        loop.close()
    assert not errors, errors


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _server_session(
    loop: asyncio.AbstractEventLoop, control: int, stream: memoryview
) -> None:
    live: set[Recorder] = set()
    made: list[Recorder] = []
    slow = bool(control & 4)

    async def handler(req: ConnectRequest) -> Accept | Reject:
        for _ in range(3 if slow else 1):
            await asyncio.sleep(0)
        if req.target[1] % 3 == 0:
            return Reject(401, "fuzz")
        # like the inbound handler: the app-side connection exists before the answer
        app = Recorder(live, pause=bool(control & 8))
        made.append(app)
        return Accept(lambda t: app)

    events = Events()
    limits = dict(LIMITS)
    if control & 0x40:  # no frame budgets: let the write bound be what stops a flood
        limits.update(max_write_buffer=16 * 1024, max_control_frames=10**6,
                      max_empty_frames=10**6, max_peer_resets=10**6, max_premature_resets=10**6)
    server = HboneServer(context=_CONTEXT, trust_domain=TD, handler=handler, events=events,
                         **limits)
    conn: Any = server.protocol_factory()
    t = FakeTransport(loop, conn, _CLIENT_DER)
    conn.connection_made(t)
    max_streams = LIMITS["max_concurrent_streams"]
    for piece in pieces(control, stream):
        if t.closing:
            break
        conn.data_received(bytes(piece))
        assert t.max_buffered <= limits["max_write_buffer"] + 2 * len(piece) + _SLACK, \
            f"{t.max_buffered} bytes queued for a peer that does not read"
        assert 0 <= conn.slots <= max_streams, conn.slots
        assert all(s.send_window <= MAX_WINDOW for s in conn.streams.values()), \
            "a stream's send window passed 2^31-1"
        if not control & 0x80:
            t.drain()
        await _settle(loop)
        assert 0 <= conn.slots <= max_streams, conn.slots
        assert len(live) <= max_streams, "more app-side protocols alive than stream slots"
    conn.eof_received()
    t.close()
    await _settle(loop)
    assert set(events.reasons) <= set(REFUSAL_REASONS), events.reasons
    assert all(p.lost == 1 and p.made == 1 for p in made), "a protocol was not ended once"
    assert conn.slots == 0, f"{conn.slots} slots held after the connection ended"
    assert server.connection_count() == 0 and server.handshaking == 0 and not server.by_peer


async def _client_session(
    loop: asyncio.AbstractEventLoop, control: int, stream: memoryview
) -> None:
    pool = HbonePool(CertificateStore(_CA, TD))
    key = (CLIENT, SERVER, ("10.0.0.1", 15008))
    conn = _ClientConnection(pool, key, _CONTEXT)
    conn.cert_held = False
    t = FakeTransport(loop, conn, _SERVER_DER)
    conn.connection_made(t)
    live: set[Recorder] = set()
    streams = [conn.start_stream("10.0.0.2:8080", ()) for _ in range(1 + (control >> 4 & 3))]
    attached: set[int] = set()
    for piece in pieces(control, stream):
        if t.closing:
            break
        conn.data_received(bytes(piece))
        assert t.max_buffered <= conn.limits.max_write_buffer + 2 * len(piece) + _SLACK, \
            f"{t.max_buffered} bytes queued for a peer that does not read"
        assert all(s.send_window <= MAX_WINDOW for s in conn.streams.values()), \
            "a stream's send window passed 2^31-1"
        for s in streams:
            if s.response is not None and s.response.done() and s.stream_id not in attached:
                attached.add(s.stream_id)
                if s.response.exception() is None:
                    s.attach(Recorder(live, pause=bool(control & 8)))
        if not control & 0x80:
            t.drain()
        await _settle(loop)
    conn.eof_received()
    t.close()
    await _settle(loop)
    for s in streams:
        assert s.response is not None and s.response.done(), "a CONNECT was left unanswered"
        s.response.exception()  # retrieved: a stream lost with the connection
    assert not live, "an attached stream never got connection_lost"
    assert pool.connection_count() == 0


@target("hbone.server_frames", deadline=5.0, max_bytes=8 * 1024 * 1024)
def hbone_server_frames(data: bytes) -> None:
    if data:
        _run(_server_session, data)


@target("hbone.client_frames", deadline=5.0, max_bytes=8 * 1024 * 1024)
def hbone_client_frames(data: bytes) -> None:
    if data:
        _run(_client_session, data)


# -- frames and strategies ---------------------------------------------------------------------

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((ftype, flags))
            + (sid & 0xFFFFFFFF).to_bytes(4, "big") + payload)


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big")
                                          for k, v in pairs))


def connect_block(port: int = 8080, extra: int = 0) -> bytes:
    headers = [(":method", "CONNECT"), (":authority", f"10.0.0.1:{port}")]
    headers += [(f"x-{i}", "v" * 100) for i in range(extra)]
    return hpack.Encoder().encode(headers)


def client_start() -> bytes:
    return PREFACE + settings()


def server_start() -> bytes:
    return settings((3, 100), (4, 65535))


_SIDS = st.sampled_from([1, 1, 3, 3, 5, 7, 9, 11, 0, 2, 4, 2**31 - 1, 0x80000001])
_COUNTS = st.sampled_from([1, 1, 1, 1, 2, 3, 10, 50, 200, 1000])
_WINDOW = st.sampled_from([0, 1, 65535, 2**30, 2**31 - 2, 2**31 - 1, 2**32 - 1])
_SETTING = st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 0xFF]),
                     st.sampled_from([0, 1, 100, 16384, 65535, 2**24, 2**31 - 1, 2**32 - 1]))


@st.composite
def one_frame(draw: st.DrawFn, *, server_side: bool) -> bytes:
    """One frame (possibly repeated: a flood) of a peer talking to a server or a client."""
    kind = draw(st.sampled_from(
        ["headers", "headers", "block", "continuation", "data", "data", "rst", "rst", "ping",
         "settings", "window", "window", "priority", "push", "goaway", "unknown", "raw"]))
    sid = draw(_SIDS)
    flags = draw(st.integers(0, 255)) if draw(st.integers(0, 7)) == 0 else None
    if kind == "headers":
        if server_side:
            block = connect_block(draw(st.sampled_from([80, 8080, 9, 15008, 1])))
        else:
            block = hpack.Encoder().encode(
                [(":status", draw(st.sampled_from(["200", "200", "401", "503", "100"])))])
        out = frame(HEADERS, flags if flags is not None else END_HEADERS
                    | draw(st.sampled_from([0, 0, END_STREAM])), sid, block)
    elif kind == "block":  # a header block split over CONTINUATIONs, maybe never ended
        n = draw(st.integers(1, 30))
        block = connect_block(8080, extra=draw(st.integers(0, 60)))
        step = max(1, len(block) // n)
        parts = [block[i : i + step] for i in range(0, len(block), step)] or [b""]
        out = frame(HEADERS, 0, sid, parts[0])
        for p in parts[1:-1]:
            out += frame(CONTINUATION, 0, sid, p)
        if len(parts) > 1:
            out += frame(CONTINUATION, END_HEADERS if draw(st.booleans()) else 0, sid, parts[-1])
    elif kind == "continuation":
        out = frame(CONTINUATION, flags or 0, sid,
                    draw(st.sampled_from([b"", b"\x00", hpack.Encoder().encode([("x", "y")])])))
    elif kind == "data":
        size = draw(st.sampled_from([0, 0, 1, 100, 16384, 65536, 200_000]))
        payload = bytes(size)
        if draw(st.integers(0, 5)) == 0:
            pad = draw(st.integers(0, 255))
            payload = bytes([pad]) + payload + bytes(pad)
            flags = (flags or 0) | PADDED
        out = frame(DATA, flags if flags is not None else draw(st.sampled_from([0, END_STREAM])),
                    sid, payload)
    elif kind == "rst":
        out = frame(RST_STREAM, 0, sid, draw(st.sampled_from([0, 8, 2, 0xFFFF])).to_bytes(4, "big"))
    elif kind == "ping":
        out = frame(PING, draw(st.sampled_from([0, 0, ACK])), 0 if sid != 2 else 1, bytes(8))
    elif kind == "settings":
        out = (frame(SETTINGS, ACK, 0) if draw(st.integers(0, 4)) == 0
               else settings(*draw(st.lists(_SETTING, max_size=3))))
    elif kind == "window":
        out = frame(WINDOW_UPDATE, 0, draw(st.sampled_from([0, 0, sid])),
                    draw(_WINDOW).to_bytes(4, "big"))
    elif kind == "priority":
        out = frame(PRIORITY, 0, sid, (sid + 2).to_bytes(4, "big") + b"\x10")
    elif kind == "push":
        out = frame(PUSH_PROMISE, END_HEADERS, sid, (sid + 1).to_bytes(4, "big") + connect_block())
    elif kind == "goaway":
        out = frame(GOAWAY, 0, 0, draw(st.sampled_from([0, 1, 2**31 - 1])).to_bytes(4, "big")
                    + draw(st.sampled_from([0, 1, 11])).to_bytes(4, "big"))
    elif kind == "unknown":
        out = frame(draw(st.integers(10, 255)), flags or 0, sid, draw(st.binary(max_size=16)))
    else:
        out = draw(st.binary(max_size=64))
    count = draw(_COUNTS)
    return out * (count if len(out) * count <= 64 * 1024 else 1)


@st.composite
def session(draw: st.DrawFn, *, server_side: bool) -> bytes:
    """A control byte, a valid start (preface and SETTINGS) and generated frames."""
    control = bytes([draw(st.integers(0, 255))])
    start = client_start() if server_side else server_start()
    body = b"".join(draw(st.lists(one_frame(server_side=server_side), max_size=12)))
    return control + start + body
