"""Fuzz targets of the HTTP path (issue 10): the HTTP/1.1 parser both ways, the L7 splice driven
through fake transports on a real event loop, and the path normalization.

Also the hypothesis strategies that build near-valid HTTP/1.1 messages and mutate them (used by
``tests/fuzz/test_http.py`` and by the differential test in the unit tier).

What each target asserts, for every input:

* ``http1.request`` / ``http1.response``: only :class:`HttpError` escapes; every feed returns,
  consumes between 0 and all of what it was given, consumes ALL of it unless the message ended
  (partial lines are consumed into the parser), and the total consumed never decreases; a body
  never has more bytes than the input. The input is fed in pieces whose sizes come from its
  first byte, then messages are parsed one after another (pipelining).
* ``l7.splice``: the input is the client's byte stream, split the same way, given to an
  :class:`L7Splice` whose two sides are fake transports (the app answers every complete request
  it is sent); no exception reaches the loop, every buffer stays bounded (pending bytes, what
  was written to either side), each rejection reason is in the fixed vocabulary, and when the
  connection ends no timer or task is left behind.
* ``httppath``: every mode returns a path or None; every mode but NONE is idempotent and leaves
  no dot segment.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
from typing import Any

from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from meshapi.httppath import PathNormalization, normalize_path
from meshapi.ids import SpiffeId
from meshapi.policy import Attributes
from tests.fuzz.harness import target
from ztunnel.http1 import REJECT_REASONS, Data, End, Head, HttpError, MessageParser
from ztunnel.l7 import MAX_PENDING_BYTES, L7Metrics, L7Splice
from ztunnel.metrics import ConnLabels
from ztunnel.splice import SpliceResult

# -- strategies -------------------------------------------------------------------------------

EOLS = [b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b"\n\r"]
METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"CONNECT", b"get", b"G\x00T", b"PRI"]
TARGETS = [b"/", b"/a?b=1", b"/admin/../x", b"//admin", b"/a%2Fb", b"/%zz", b"*",
           b"http://h/x", b"http://u@h/", b"https://h", b"h:443", b"/\xff", b"/a#f", b"/ a"]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1"]
HEADERS = [
    b"Host: h", b"Host: h", b"Host: h", b"Host:", b"Host: a b", b"Host: h:80",
    b"Content-Length: 5", b"Content-Length: 0", b"Content-Length: 5, 5", b"Content-Length: 5, 6",
    b"Content-Length: -6", b"Content-Length: +5", "Content-Length: \u0661\u0662".encode(),
    "Content-Length: \u00b2".encode("latin-1"), b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding : chunked", b" Transfer-Encoding: chunked", b"Connection: close",
    b"Connection: Upgrade", b"Upgrade: websocket", b"Expect: 100-continue", b"X-A: a\x00b",
    b"X-B:\tv\t", b"Bad Name: x", b"X-C: \xe9",
]
CHUNK_SIZES = [b"5", b"0", b"a", b"A", b"-6", b"+5", b"0x5", b" 5", b"5 ", b"5;e=1",
               b"5;e=\"q\"", b"5;", "\u0665".encode(), b"ffffffffffffffffff", b"00005"]


@st.composite
def near_valid_request(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(EOLS))
    out = bytearray()
    for _ in range(draw(st.integers(1, 3))):
        out += draw(st.sampled_from(METHODS)) + b" " + draw(st.sampled_from(TARGETS)) + b" " \
            + draw(st.sampled_from(VERSIONS)) + eol
        headers = draw(st.lists(st.sampled_from(HEADERS), max_size=6))
        for h in headers:
            out += h + draw(st.sampled_from(EOLS))
        out += eol
        if draw(st.booleans()):
            for _ in range(draw(st.integers(0, 3))):
                size = draw(st.sampled_from(CHUNK_SIZES))
                out += size + draw(st.sampled_from(EOLS)) + b"hello" + draw(st.sampled_from(EOLS))
            out += b"0" + eol + draw(st.sampled_from([b"", b"T: v" + eol])) + eol
        else:
            out += draw(st.binary(max_size=8))
    return bytes(out)


@st.composite
def near_valid_response(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(EOLS))
    status = draw(st.sampled_from([b"200 OK", b"100 Continue", b"101 Switching", b"204",
                                   b"304 Not Modified", b"20 X", b"999 Y", b"200"]))
    out = bytearray(draw(st.sampled_from(VERSIONS)) + b" " + status + eol)
    for h in draw(st.lists(st.sampled_from(HEADERS), max_size=5)):
        out += h + draw(st.sampled_from(EOLS))
    out += eol
    for _ in range(draw(st.integers(0, 3))):
        out += draw(st.sampled_from(CHUNK_SIZES)) + eol + b"hello" + eol
    out += draw(st.binary(max_size=16))
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base``, then a few byte flips, insertions and deletions."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 44, 58, 59, 45, 48, 0x7F, 0xFF]))
        if op == "flip":
            data[i] = byte
        elif op == "insert":
            data.insert(i, byte)
        else:
            del data[i]
    return bytes(data)


def splits(data: bytes) -> list[bytes]:
    """The input in pieces whose sizes follow its first byte (1..16, or whole)."""
    if not data:
        return []
    step = data[0] % 17
    body = data[1:]
    if step == 0:
        return [body]
    return [body[i : i + step] for i in range(0, len(body), step)]


# -- http1 ------------------------------------------------------------------------------------


def _parse_stream(data: bytes, *, requests: bool) -> None:
    method = ("GET", "HEAD", "CONNECT", "POST")[data[0] % 4] if data else "GET"
    p = MessageParser(requests=requests)
    p.request_method = method
    buf = bytearray()
    body = 0
    consumed = 0
    try:
        for piece in splits(data):
            buf += piece
            while buf:
                events, used = p.feed(buf)
                assert 0 <= used <= len(buf)
                if not p.done:
                    assert used == len(buf), "an unfinished message left input unconsumed"
                del buf[:used]
                consumed += used
                body += sum(len(e.raw) for e in events if isinstance(e, Data))
                assert body <= len(data)
                assert all(isinstance(e, Head | Data | End) for e in events)
                if p.done:
                    p.next_message()
                    p.request_method = method
                elif used == 0:
                    break
        p.eof()
    except HttpError as exc:
        assert exc.reason in REJECT_REASONS
        assert 100 <= exc.status <= 599
    assert consumed <= len(data)


@target("http1.request")
def http1_request(data: bytes) -> None:
    _parse_stream(data, requests=True)


@target("http1.response")
def http1_response(data: bytes) -> None:
    _parse_stream(data, requests=False)


# -- path normalization ------------------------------------------------------------------------


@target("httppath")
def httppath(data: bytes) -> None:
    path = "/" + data.decode("latin-1")
    for mode in PathNormalization:
        out = normalize_path(path, mode)
        if mode is PathNormalization.NONE:
            assert out == path
            continue
        if out is None:
            continue
        assert normalize_path(out, mode) == out, (path, mode)
        segments = out.split("/")
        assert "." not in segments and ".." not in segments


# -- the L7 splice through fake transports ----------------------------------------------------


class FakeTransport(asyncio.Transport):
    """An in-memory transport: records writes, models a write buffer with a high-water mark
    (``pause_writing`` above it, ``resume_writing`` once :meth:`drain` empties it)."""

    HIGH_WATER = 16 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self.written = bytearray()
        self.buffered = 0
        self.max_buffered = 0
        self.closing = False
        self.reading = True
        self._write_paused = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.buffered += len(data)
        self.max_buffered = max(self.max_buffered, self.buffered)
        if self.buffered > self.HIGH_WATER and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def drain(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        self.buffered = 0
        if self._write_paused:
            self._write_paused = False
            self._protocol.resume_writing()
        return out

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


ATTRS = Attributes(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2"), 8080,
                   peer=SpiffeId("cluster.local", "default", "client"), http_port=True)
#: one set of request metrics for every input (a registry refuses a second registration)
_METRICS = L7Metrics(CollectorRegistry())
#: bound on what the splice may write to the client per input byte (a 403 or 400 per request)
_MAX_OUT = 2 * MAX_PENDING_BYTES


def _authorize(attrs: Attributes) -> tuple[bool, str]:
    assert attrs.request is not None
    return (not attrs.request.path.startswith("/admin")), "fuzz"


def _drive_splice(data: bytes) -> None:
    loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        loop.run_until_complete(_splice_session(loop, data))
        # let every close and connection_lost run
        loop.run_until_complete(asyncio.sleep(0))
        pending = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
        assert not pending, f"timers left behind: {pending}"
    finally:
        loop.close()
    assert not errors, errors


async def _splice_session(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    rejected: list[str] = []
    results: list[SpliceResult] = []
    splice = L7Splice(results.append, attributes=ATTRS, authorize=_authorize,
                      metrics=_METRICS, labels=ConnLabels("destination"),
                      access_log=io.StringIO(), reject=rejected.append,
                      head_timeout=60.0, idle_timeout=60.0)
    down = FakeTransport(loop, splice.downstream)
    up = FakeTransport(loop, splice.upstream)
    splice.upstream.connection_made(up)
    splice.downstream.connection_made(down)
    app = MessageParser(requests=True)
    app_buf = bytearray()
    total_out = 0
    for i, piece in enumerate(splits(data)):
        if not down.closing:
            splice.downstream.data_received(piece)
        # the app: answer each complete request it was sent
        app_buf += up.drain()
        while app_buf and not up.closing:
            try:
                events, used = app.feed(app_buf)
            except HttpError:
                break  # the splice forwarded only what it parsed: the app sees no garbage
            del app_buf[:used]
            if any(isinstance(e, End) for e in events):
                app.next_message()
                splice.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif used == 0:
                break
        assert len(splice._pending) <= MAX_PENDING_BYTES + len(piece)
        assert down.max_buffered <= FakeTransport.HIGH_WATER + 4096 + len(piece) * 8
        # the client reads what it was sent on every other piece (and never on some inputs)
        if data[0] & 0x80 == 0 or i % 2:
            total_out += len(down.drain())
        await asyncio.sleep(0)
    total_out += len(down.drain())
    assert total_out <= _MAX_OUT + 64 * len(data)
    assert set(rejected) <= set(REJECT_REASONS), rejected
    assert len(rejected) <= 1, rejected  # counted once per connection
    splice.downstream.eof_received()
    for t in (down, up):
        t.close()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(results) == 1, "on_done did not run exactly once"


@target("l7.splice", deadline=5.0)
def l7_splice(data: bytes) -> None:
    if not data:
        return
    _drive_splice(data)
