"""ztunnel.http1: sans-I/O HTTP/1.1 framing."""

from __future__ import annotations

import pytest

from ztunnel.http1 import Data, End, Head, HttpError, MessageParser


def parse_all(
    parser: MessageParser, data: bytes, step: int | None = None
) -> tuple[list[object], bytes]:
    """Feed ``data`` (in ``step``-byte pieces); returns the events and what was not consumed."""
    events: list[object] = []
    buf = bytearray()
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        buf += piece
        evs, used = parser.feed(buf)
        del buf[:used]
        events += evs
        if parser.done:
            break
    return events, bytes(buf)


def body(events: list[object]) -> bytes:
    return b"".join(e.raw for e in events if isinstance(e, Data))


@pytest.mark.parametrize("step", [None, 1, 7])
def test_request_with_content_length(step: int | None) -> None:
    raw = b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    p = MessageParser(requests=True)
    events, _ = parse_all(p, raw, step)
    head = events[0]
    assert isinstance(head, Head)
    assert (head.method, head.path, head.host) == ("POST", "/a?x=1", "h")
    assert body(events) == b"hello" and isinstance(events[-1], End)


@pytest.mark.parametrize("step", [None, 1, 3])
def test_chunked_body_is_passed_raw(step: int | None) -> None:
    chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    p = MessageParser(requests=True)
    events, _ = parse_all(p, raw, step)
    assert body(events) == chunked and isinstance(events[-1], End)


def test_pipelined_requests_stop_at_message_end() -> None:
    raw = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    p = MessageParser(requests=True)
    events, used = p.feed(raw)
    assert [type(e) for e in events] == [Head, End] and used == len(raw) // 2
    assert p.feed(raw[used:]) == ([], 0)  # nothing until the caller asks for the next one
    p.next_message()
    events, used = p.feed(raw[used:])
    assert isinstance(events[0], Head) and events[0].path == "/2"


def test_keep_alive_expect_and_upgrade_flags() -> None:
    p = MessageParser(requests=True)
    (head, _), _ = p.feed(b"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    assert isinstance(head, Head)
    assert head.upgrade and not head.keep_alive and head.expect_continue
    p = MessageParser(requests=True)
    (head, _), _ = p.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(head, Head) and not head.keep_alive


def test_responses_framing() -> None:
    p = MessageParser(requests=False)
    events, used = p.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert [type(e) for e in events] == [Head, End] and used == 25
    p.next_message()
    p.request_method = "HEAD"
    events, _ = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert [type(e) for e in events] == [Head, End]  # HEAD: no body whatever the length says
    p = MessageParser(requests=False)
    events, _ = p.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert body(events) == b"until close" and not p.done
    assert [type(e) for e in p.eof()] == [End]
    p = MessageParser(requests=False)
    events, _ = p.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert isinstance(events[-1], End)


MALFORMED = [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"G(T / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab", 400),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, 431),
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED)
def test_malformed_requests(raw: bytes, status: int) -> None:
    p = MessageParser(requests=True)
    with pytest.raises(HttpError) as err:
        p.feed(raw)
    assert err.value.status == status


def test_eof_mid_message_is_an_error() -> None:
    p = MessageParser(requests=True)
    p.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(HttpError):
        p.eof()
