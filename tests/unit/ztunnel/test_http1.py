"""ztunnel.http1: sans-I/O HTTP/1.1 framing."""

from __future__ import annotations

import pytest

from ztunnel.http1 import (
    MAX_HEAD_BYTES,
    REJECT_REASONS,
    Data,
    End,
    Head,
    HttpError,
    MessageParser,
)


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
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    p = MessageParser(requests=True)
    events, _ = parse_all(p, raw, step)
    assert body(events) == chunked and isinstance(events[-1], End)


def test_pipelined_requests_stop_at_message_end() -> None:
    raw = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    p = MessageParser(requests=True)
    events, used = p.feed(raw)
    assert [type(e) for e in events] == [Head, End] and used == len(raw) // 2
    assert p.feed(raw[used:]) == ([], 0)  # nothing until the caller asks for the next one
    p.next_message()
    events, used = p.feed(raw[used:])
    assert isinstance(events[0], Head) and events[0].path == "/2"


def test_keep_alive_expect_and_upgrade_flags() -> None:
    p = MessageParser(requests=True)
    (head, _), _ = p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, close\r\n"
                          b"Upgrade: websocket\r\n"
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


H = b"Host: h\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"

#: (input, status, reason): each row is one rule of RFC 9112 read strictly (ztunnel.http1)
MALFORMED = [
    # request line
    (b"GET /\r\n\r\n", 400, "http_request_line"),
    (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400, "http_request_line"),
    (b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400, "http_request_line"),
    (b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400, "http_request_line"),
    (b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400, "http_request_line"),
    (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, "http_version"),
    (b"GET / HTTP/1.10\r\n" + H + b"\r\n", 400, "http_request_line"),
    (b"get / HTTP/1.1\r\n" + H + b"\r\n", 400, "http_method"),
    (b"Delete / HTTP/1.1\r\n" + H + b"\r\n", 400, "http_method"),
    (b"PRI * HTTP/1.1\r\n" + H + b"\r\n", 400, "http_method"),
    (b"PRI / HTTP/1.0\r\n\r\n", 400, "http_method"),
    (b"GET / HTTP/1.1\r\nHost: h\rX", 400, "http_bare_cr"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, "http_head_too_large"),
    # request target
    (b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400, "http_request_line"),
    (b"GET /a%zz HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET /a%2 HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET /a#f HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET h:80 HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"CONNECT /x HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"CONNECT h HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"CONNECT h:99999 HTTP/1.1\r\nHost: h:99999\r\n\r\n", 400, "http_target"),
    (b"GET ftp://h/x HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET http://u@h/x HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    (b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400, "http_target"),
    # Host
    (b"GET / HTTP/1.1\r\n\r\n", 400, "http_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "http_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "http_host"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "http_host"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "http_host"),
    (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "http_host"),
    (b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", 400, "http_host"),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: b:443\r\n\r\n", 400, "http_host"),
    # field lines
    (b"GET / HTTP/1.1\r\n" + H + b"no colon\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"Bad Name: x\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A : x\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A\t: x\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-\x00: a\r\n\r\n", 400, "http_header_syntax"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400, "http_obs_fold"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n\tb\r\n\r\n", 400, "http_obs_fold"),
    # bare LF / bare CR, in every place
    (b"GET / HTTP/1.1\n" + H + b"\r\n", 400, "http_bare_lf"),
    (b"GET / HTTP/1.1\r\nHost: h\n\r\n", 400, "http_bare_lf"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400, "http_bare_lf"),
    (b"GET / HTTP/1.1\nHost: h\n\n", 400, "http_bare_lf"),
    (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400, "http_bare_cr"),
    (b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400, "http_bare_cr"),
    (CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400, "http_bare_lf"),
    (CHUNKED + b"5\r\nhello\r\n0\n\r\n", 400, "http_bare_lf"),
    (CHUNKED + b"5\r\nhello\r\n0\r\n\n", 400, "http_bare_lf"),
    (CHUNKED + b"5\r\nhello\r\n0\r\nX: y\n\r\n", 400, "http_bare_lf"),
    (CHUNKED + b"5\rX\r\nhello\r\n", 400, "http_bare_cr"),
    # Content-Length
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
     "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 2\r\n\r\n", 400,
     "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1,\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x1\r\n\r\n", 400,
     "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1_0\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: " + "\u0661\u0662".encode() + b"\r\n\r\n",
     400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \xb2\r\n\r\n", 400, "http_content_length"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: " + b"9" * 19 + b"\r\n\r\n", 400,
     "http_content_length"),
    # Transfer-Encoding
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     400, "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400,
     "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400,
     "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400,
     "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n", 400, "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked,\r\n\r\n", 400,
     "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \"chunked\"\r\n\r\n", 400,
     "http_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501,
     "http_transfer_encoding"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "http_transfer_encoding"),
    # chunk size and extensions
    (CHUNKED + b"-6\r\nX", 400, "http_chunk_size"),
    (CHUNKED + b"+6\r\nabcdef\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"0x6\r\nabcdef\r\n", 400, "http_chunk_size"),
    (CHUNKED + b" 6\r\nabcdef\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"6 \r\nabcdef\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"6_0\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"\r\n", 400, "http_chunk_size"),
    (CHUNKED + "\u0661".encode() + b"\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"zz\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"1" * 17 + b"\r\n", 400, "http_chunk_size"),
    (CHUNKED + b"5;\r\nhello\r\n", 400, "http_chunk_ext"),
    (CHUNKED + b"5;a=\r\nhello\r\n", 400, "http_chunk_ext"),
    (CHUNKED + b"5;a=\"b\r\nhello\r\n", 400, "http_chunk_ext"),
    (CHUNKED + b"5;a b\r\nhello\r\n", 400, "http_chunk_ext"),
    (CHUNKED + b"5;a=\x00\r\nhello\r\n", 400, "http_chunk_ext"),
    (CHUNKED + b"5;" + b"a" * 2000 + b"\r\n", 400, "http_chunk_ext"),
    (CHUNKED + b"1\r\nab", 400, "http_chunk_data"),
    (CHUNKED + b"1\r\na\n", 400, "http_chunk_data"),
    # trailers
    (CHUNKED + b"0\r\nBad Name: x\r\n\r\n", 400, "http_header_syntax"),
    (CHUNKED + b"0\r\nX: a\r\n b\r\n\r\n", 400, "http_obs_fold"),
    (CHUNKED + b"0\r\n" + b"X-T: " + b"a" * 4000 + b"\r\n" * 1 + b"X-T: " + b"a" * 4000 + b"\r\n"
     + b"X-T: " + b"a" * 4000 + b"\r\n" + b"X-T: " + b"a" * 4000 + b"\r\n" + b"X-T: "
     + b"a" * 4000 + b"\r\n\r\n", 431, "http_trailer"),
    # size limits
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n" * 100 + b"\r\n", 431, "http_head_too_large"),
    (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 9000, 431, "http_head_too_large"),
    (b"GET / HTTP/1.1\r\n" + (b"X: " + b"a" * 8000 + b"\r\n") * 9, 431, "http_head_too_large"),
]


@pytest.mark.parametrize(("raw", "status", "reason"), MALFORMED)
@pytest.mark.parametrize("step", [None, 1])
def test_malformed_requests(raw: bytes, status: int, reason: str, step: int | None) -> None:
    p = MessageParser(requests=True)
    with pytest.raises(HttpError) as err:
        parse_all(p, raw, step)
    assert (err.value.status, err.value.reason) == (status, reason), str(err.value)
    assert reason in REJECT_REASONS


#: (input, path, host, body): accepted as the RFC says, read as the app will read it
ACCEPTED = [
    (b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n", "/a?b", "h", b""),
    (b"GET http://Ex.com:8080/a?b HTTP/1.1\r\nHost: ex.com:8080\r\n\r\n", "/a?b",
     "Ex.com:8080", b""),
    (b"GET https://ex.com HTTP/1.1\r\nHost: ex.com\r\n\r\n", "/", "ex.com", b""),
    (b"GET http://ex.com?q HTTP/1.1\r\nHost: ex.com\r\n\r\n", "/?q", "ex.com", b""),
    (b"GET http://ex.com/a HTTP/1.0\r\n\r\n", "/a", "ex.com", b""),
    (b"CONNECT ex.com:443 HTTP/1.1\r\nHost: ex.com:443\r\n\r\n", "", "ex.com:443", b""),
    (b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", "", "[::1]:443", b""),
    (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*", "h", b""),
    (b"GET / HTTP/1.0\r\n\r\n", "/", "", b""),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "/", "", b""),
    (b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", "/", "h", b""),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-A:\t a \t\r\nX-B: \xff\r\n\r\n", "/", "h", b""),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
     "/", "h", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 003\r\n\r\nabc", "/", "h", b"abc"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
     b"00A ; a = b ;c=\"d\\\"e\"\r\n0123456789\r\n0;x\r\nT: v\r\n\r\n", "/", "h",
     b"00A ; a = b ;c=\"d\\\"e\"\r\n0123456789\r\n0;x\r\nT: v\r\n\r\n"),
]


@pytest.mark.parametrize(("raw", "path", "host", "data"), ACCEPTED)
@pytest.mark.parametrize("step", [None, 1])
def test_accepted_requests(raw: bytes, path: str, host: str, data: bytes,
                           step: int | None) -> None:
    p = MessageParser(requests=True)
    events, rest = parse_all(p, raw, step)
    head = events[0]
    assert isinstance(head, Head) and (head.path, head.host) == (path, host)
    assert body(events) == data and isinstance(events[-1], End) and rest == b""


def test_the_negative_chunk_no_longer_spins() -> None:
    """Issue 10: ``int("-6", 16)`` made ``_remaining`` negative and feed loop forever."""
    p = MessageParser(requests=True)
    with pytest.raises(HttpError) as err:
        p.feed(CHUNKED + b"-6\r\nX")
    assert err.value.reason == "http_chunk_size"


def test_every_feed_consumes_or_stops_at_the_message_end() -> None:
    """Bytes of an incomplete line are consumed (so a trickled head is linear), never past
    the end of the message."""
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nabGET"
    p = MessageParser(requests=True)
    used_total = 0
    for i in range(len(raw)):
        _, used = p.feed(raw[used_total : i + 1])
        used_total += used
        assert used_total <= raw.index(b"GET")
        if not p.done:
            assert used_total == i + 1
    assert p.done and used_total == raw.index(b"GET")


def test_head_bytes_are_bounded_while_they_trickle_in() -> None:
    p = MessageParser(requests=True)
    p.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HttpError) as err:
        for _ in range(MAX_HEAD_BYTES // 100 + 2):
            p.feed(b"X: " + b"a" * 95 + b"\r\n")
    assert err.value.status == 431


def test_responses_strict_framing() -> None:
    def frame(raw: bytes, method: str = "GET") -> tuple[list[object], MessageParser]:
        p = MessageParser(requests=False)
        p.request_method = method
        events, _ = p.feed(raw)
        return events, p

    events, p = frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    assert isinstance(events[-1], End)  # framed by chunked, passed on coded
    events, p = frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz")
    assert body(events) == b"xyz" and not p.done  # chunked not last: until close
    events, p = frame(b"HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT")
    assert isinstance(events[-1], End)  # a 2xx to CONNECT has no body: a tunnel follows
    events, p = frame(b"HTTP/1.1 204\r\n\r\n")
    assert isinstance(events[-1], End)
    for bad in (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
                b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/2 200 OK\r\n\r\n"):
        with pytest.raises(HttpError):
            frame(bad)


def test_eof_mid_message_is_an_error() -> None:
    p = MessageParser(requests=True)
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(HttpError):
        p.eof()
