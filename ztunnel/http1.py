"""HTTP/1.1 message framing, sans I/O: bytes in, events out (issue 4; strict RFC 9112: issue 10).

:class:`MessageParser` parses ONE direction of a connection (requests, or responses) and emits
:class:`Head`, :class:`Data` and :class:`End` events. Data events carry the *raw* bytes of the
body as they were on the wire (chunk framing included), so a proxy forwards exactly what it read
and the parser only tells it where messages begin and end.

Strictness: wherever a lenient reading would let two parties disagree on where a message ends
or what it asks for (request smuggling, policy bypass), the message is rejected with
:class:`HttpError` carrying the status to answer and a ``reason`` from :data:`REJECT_REASONS`
(the ``reason`` label of ``nodemesh_ztunnel_rejected_total``):

* every line of the head, every chunk-size line and every trailer line ends with CRLF; a bare LF
  (``http_bare_lf``) or a CR not followed by LF (``http_bare_cr``) anywhere in them is rejected;
* request line ``token SP request-target SP HTTP/1.x`` with single spaces; ``HTTP/1.0`` and
  ``HTTP/1.1`` only (another ``HTTP/d.d``: 505); the target is printable ASCII with valid
  percent-encodings and no fragment, in origin-form (``/p``), absolute-form
  (``http://host/p``: no userinfo, a ``Host`` header must equal its authority, RFC 9112 3.2.2),
  authority-form (``host:port``, CONNECT only) or asterisk-form (``*``, OPTIONS only);
* field lines ``token ":" OWS value OWS``: no whitespace before the colon, no obs-fold
  (``http_obs_fold``), no control byte but HTAB in a value; exactly one ``Host`` in an
  HTTP/1.1 request (at most one in HTTP/1.0), well-formed (``http_host``);
* ``Content-Length``: one or more lines, each a comma list of ASCII ``1*DIGIT``, all identical,
  at most 18 digits; ``Transfer-Encoding``: a list of tokens whose last is ``chunked`` and that
  has ``chunked`` once; a request may use ``chunked`` alone (another coding: 501), not in
  HTTP/1.0; both headers: rejected;
* chunk-size ``1*16HEXDIG`` (ASCII, no sign, no ``0x``, nothing else), then extensions
  ``*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )``, the whole line at most
  :data:`MAX_CHUNK_LINE_BYTES`; chunk data followed by CRLF; trailer fields checked as header
  fields, at most :data:`MAX_TRAILER_BYTES` in all.

Limits: request line :data:`MAX_REQUEST_LINE_BYTES` (414), a field line
:data:`MAX_FIELD_LINE_BYTES`, the head :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS` fields
(431). Every limit is checked as bytes arrive, before the line or head is complete.

Invariants:

* :meth:`MessageParser.feed` consumes input only up to the end of the current message and
  returns how many bytes it used; the caller keeps the rest (the next pipelined request) and feeds
  it when it is ready for the next message (:meth:`MessageParser.next_message`). Bytes of an
  incomplete line are consumed into the parser (bounded by the limits above), so a head that
  trickles in byte by byte costs linear time.
* Progress: while the message is not done, every turn of :meth:`feed`'s loop consumes at least
  one byte, or raises (checked explicitly: a turn that did not would raise ``http_internal``).
  A chunk size is non-negative by construction (hex digits only).
* Requests without Content-Length or chunked have no body. Responses: 1xx, 204, 304, answers
  to HEAD and 2xx answers to CONNECT have none; a 1xx other than 101 is followed by the real
  response; a response without framing runs until the connection closes
  (:meth:`MessageParser.eof`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from meshapi.httppath import ambiguous_method
from ztunnel.errors import ZtunnelError

MAX_REQUEST_LINE_BYTES: Final = 8 * 1024
MAX_FIELD_LINE_BYTES: Final = 8 * 1024
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
MAX_CHUNK_LINE_BYTES: Final = 1024
MAX_CHUNK_SIZE_DIGITS: Final = 16
MAX_TRAILER_BYTES: Final = 16 * 1024
MAX_CONTENT_LENGTH_DIGITS: Final = 18

#: every ``reason`` an :class:`HttpError` (and the L7 splice) may count; a fixed vocabulary
REJECT_REASONS: Final = (
    "http_request_line",  # not ``method SP target SP version``
    "http_method",  # a standard method in another case (``get``), or PRI (the h2 preface)
    "http_version",  # not HTTP/1.0 or HTTP/1.1 (505)
    "http_target",  # request-target syntax or form (absolute/authority/asterisk rules)
    "http_host",  # Host missing, repeated, malformed, or not the target's authority
    "http_header_syntax",  # field line: name not a token, space before colon, control bytes
    "http_obs_fold",  # a field line continued on the next line
    "http_bare_lf",  # LF without CR before it
    "http_bare_cr",  # CR without LF after it
    "http_head_too_large",  # request line (414), field line, head or field count (431)
    "http_content_length",  # not identical ASCII 1*DIGIT values
    "http_transfer_encoding",  # chunked not last/once, another coding (501), TE with CL
    "http_chunk_size",  # chunk size not 1*16HEXDIG
    "http_chunk_ext",  # malformed or too long chunk extension
    "http_chunk_data",  # chunk data not followed by CRLF
    "http_trailer",  # trailer section too large
    "http_path",  # path rejected by the mesh's path normalization (encoded slash)
    "http_head_timeout",  # a request head not complete in time (408)
    "http_idle_timeout",  # a keep-alive connection idle too long (closed)
    "http_incomplete",  # the connection closed in the middle of a message
    "http_response",  # the app's response is malformed (connection aborted)
    "http_internal",  # the parser made no progress (a bug; the connection is closed)
)

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_STATUS_LINE: Final = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: [\t \x21-\x7e\x80-\xff]*)?")
#: bytes not allowed in a field value (after OWS is stripped): CTLs but HTAB, and DEL
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_PERCENT: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_OWS: Final = b" \t"
#: uri-host [":" port]: reg-name (unreserved, pct-encoded, sub-delims) or an IP literal
_HOST_NAME: Final = r"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)"
_HOST_RE: Final = re.compile(rf"(?:{_HOST_NAME}(?::[0-9]{{0,5}})?)?")
_AUTHORITY_FORM: Final = re.compile(rf"({_HOST_NAME}):([0-9]{{1,5}})")
_ABSOLUTE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?]*)(.*)", re.DOTALL)
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]+")
_CHUNK_EXT: Final = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN
    + rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
)
_DIGITS: Final = re.compile(r"[0-9]+")


class HttpError(ZtunnelError):
    """Malformed or over-limit HTTP/1.1 input; ``status`` is what to answer a client with,
    ``reason`` the label it is counted under (one of :data:`REJECT_REASONS`)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        assert reason in REJECT_REASONS, reason
        self.status = status
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Head:
    #: request: method and target; response: "" and ""
    method: str
    target: str
    version: str
    #: response status (0 for requests)
    status: int
    #: names lower case, in order
    headers: tuple[tuple[str, str], ...]
    raw: bytes
    #: request: the path of the target, query included ("/" for an absolute-form target
    #: without one, "*" for asterisk-form, "" for CONNECT); response: ""
    path: str = ""
    #: request: the target's authority (absolute-form, CONNECT) or the Host header; else ""
    host: str = ""

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for k, v in self.headers if k == name for t in v.split(",")
                if t.strip()}

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    @property
    def expect_continue(self) -> bool:
        return (self.get("expect") or "").lower() == "100-continue"

    @property
    def upgrade(self) -> bool:
        return "upgrade" in self.tokens("connection") and self.get("upgrade") is not None


@dataclass(frozen=True, slots=True)
class Data:
    raw: bytes


@dataclass(frozen=True, slots=True)
class End:
    pass


Event = Head | Data | End

_HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _CLOSE, _DONE = range(8)


class MessageParser:
    def __init__(self, *, requests: bool) -> None:
        self._requests = requests
        self._state = _HEAD
        self._remaining = 0
        #: the line being read (head, chunk-size or trailer line), CRLF included once complete
        self._line = bytearray()
        #: head: the complete lines so far (start line first); their bytes; leading CRLFs
        self._lines: list[bytes] = []
        self._head_bytes = 0
        self._trailer_bytes = 0
        #: response side: the method of the request being answered (HEAD has no body)
        self.request_method = "GET"
        self.head: Head | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def idle(self) -> bool:
        """No byte of a message has been consumed yet."""
        return self._state == _HEAD and self.head is None and self._head_bytes == 0

    @property
    def reading_head(self) -> bool:
        """Some bytes of a head have arrived, not all of it."""
        return self._state == _HEAD and self._head_bytes > 0

    def next_message(self) -> None:
        self._state = _HEAD
        self.head = None
        self._line.clear()
        self._lines = []
        self._head_bytes = 0
        self._trailer_bytes = 0

    def feed(self, buf: bytes | bytearray) -> tuple[list[Event], int]:
        """Parse from the start of ``buf``; returns events and the bytes consumed (never past
        the end of the current message). Raises :class:`HttpError`."""
        events: list[Event] = []
        pos = 0
        n = len(buf)
        while pos < n and self._state != _DONE:
            before = pos
            s = self._state
            if s == _HEAD:
                pos = self._feed_head(buf, pos, n, events)
            elif s in (_LENGTH, _CHUNK_DATA):
                assert self._remaining > 0
                take = min(self._remaining, n - pos)
                events.append(Data(bytes(buf[pos : pos + take])))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    if s == _LENGTH:
                        self._end(events)
                    else:
                        self._state = _CHUNK_CRLF
            elif s == _CLOSE:
                events.append(Data(bytes(buf[pos:])))
                pos = n
            elif s == _CHUNK_CRLF:
                want = b"\r\n"[len(self._line) :]
                take = min(len(want), n - pos)
                if buf[pos : pos + take] != want[:take]:
                    raise HttpError(400, "chunk data not followed by CRLF", "http_chunk_data")
                self._line += buf[pos : pos + take]
                pos += take
                if len(self._line) == 2:
                    self._line.clear()
                    events.append(Data(b"\r\n"))
                    self._state = _CHUNK_SIZE_LINE
            else:  # _CHUNK_SIZE_LINE, _TRAILER
                limit = MAX_CHUNK_LINE_BYTES if s == _CHUNK_SIZE_LINE else MAX_FIELD_LINE_BYTES
                pos, line = self._take_line(buf, pos, n, limit)
                if line is not None:
                    events.append(Data(line))
                    if s == _CHUNK_SIZE_LINE:
                        self._chunk_size_line(line, events)
                    else:
                        self._trailer_line(line, events)
            if pos <= before:
                # never reached (each branch above consumes a byte or raises); a loop that
                # did not consume would hold the event loop, so fail the connection instead
                raise HttpError(400, "HTTP parser made no progress", "http_internal")
        return _merge(events), pos

    def eof(self) -> list[Event]:
        """The peer closed: ends a read-until-close body; elsewhere mid-message is an error."""
        if self._state == _CLOSE:
            self._state = _DONE
            return [End()]
        if self.idle or self._state == _DONE:
            return []
        raise HttpError(400, "connection closed in the middle of a message", "http_incomplete")

    # -- lines -------------------------------------------------------------------------------

    def _take_line(
        self, buf: bytes | bytearray, pos: int, n: int, limit: int
    ) -> tuple[int, bytes | None]:
        """Consume up to the end of a line (LF included) into ``self._line``; the line once
        complete and checked for bare LF / bare CR, else None (all of ``buf`` consumed)."""
        room = limit + 2 - len(self._line)
        nl = buf.find(b"\n", pos, min(n, pos + room))
        if nl < 0:
            end = min(n, pos + room)
            start = max(0, len(self._line) - 1)
            self._line += buf[pos:end]
            if len(self._line) >= limit + 2:
                raise _too_long(self._state, len(self._line), limit, self._requests,
                                bool(self._lines))
            # a CR followed by anything but LF is a bare CR now, not only at the line's end
            # (looks at the new bytes only: linear however the line trickles in)
            cr = self._line.find(b"\r", start, len(self._line) - 1)
            if cr >= 0:
                raise HttpError(400, "CR not followed by LF", "http_bare_cr")
            return end, None
        self._line += buf[pos : nl + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) < 2 or line[-2] != 0x0D:
            raise HttpError(400, "line ended by a bare LF (CRLF required)", "http_bare_lf")
        if b"\r" in line[:-2]:
            raise HttpError(400, "CR not followed by LF", "http_bare_cr")
        return nl + 1, line

    def _feed_head(self, buf: bytes | bytearray, pos: int, n: int, events: list[Event]) -> int:
        start_line = not self._lines
        limit = (MAX_REQUEST_LINE_BYTES if self._requests else MAX_FIELD_LINE_BYTES) \
            if start_line else MAX_FIELD_LINE_BYTES
        new_pos, line = self._take_line(buf, pos, n, limit)
        self._head_bytes += new_pos - pos
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HttpError(431, f"header section exceeds {MAX_HEAD_BYTES} bytes",
                            "http_head_too_large")
        if line is None:
            return new_pos
        if line == b"\r\n":
            if start_line:
                return new_pos  # RFC 9112 2.2: an empty line before the request line is ignored
            head = self._parse_head(self._lines)
            self.head = head
            events.append(head)
            self._frame(head, events)
            return new_pos
        if start_line:
            self._lines.append(line)
            return new_pos
        if line[0] in _OWS:
            raise HttpError(400, "obs-fold (a field line continued on the next line)",
                            "http_obs_fold")
        _check_field_line(line)
        if len(self._lines) - 1 >= MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} header fields", "http_head_too_large")
        self._lines.append(line)
        return new_pos

    def _chunk_size_line(self, line: bytes, events: list[Event]) -> None:
        body = line[:-2]
        m = _CHUNK_SIZE.match(body)
        if m is None or m.end() > MAX_CHUNK_SIZE_DIGITS:
            raise HttpError(400, f"bad chunk size {body[:40]!r} (1 to {MAX_CHUNK_SIZE_DIGITS} "
                            "hex digits)", "http_chunk_size")
        ext = body[m.end() :]
        if ext and not ext.lstrip(_OWS).startswith(b";"):
            raise HttpError(400, f"bad chunk size {body[:40]!r} (1 to {MAX_CHUNK_SIZE_DIGITS} "
                            "hex digits)", "http_chunk_size")
        if ext and _CHUNK_EXT.fullmatch(ext) is None:
            raise HttpError(400, f"malformed chunk extension {ext[:40]!r}", "http_chunk_ext")
        size = int(m.group(0), 16)
        if size == 0:
            self._state = _TRAILER
        else:
            self._remaining = size
            self._state = _CHUNK_DATA

    def _trailer_line(self, line: bytes, events: list[Event]) -> None:
        if line == b"\r\n":
            self._end(events)
            return
        self._trailer_bytes += len(line)
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise HttpError(431, f"trailer section exceeds {MAX_TRAILER_BYTES} bytes",
                            "http_trailer")
        if line[0] in _OWS:
            raise HttpError(400, "obs-fold in the trailer section", "http_obs_fold")
        _check_field_line(line)

    # -- messages ----------------------------------------------------------------------------

    def _end(self, events: list[Event]) -> None:
        self._state = _DONE
        events.append(End())

    def _frame(self, head: Head, events: list[Event]) -> None:
        te_values = [v for k, v in head.headers if k == "transfer-encoding"]
        cl_values = [v for k, v in head.headers if k == "content-length"]
        if te_values and cl_values:
            raise HttpError(400 if self._requests else 502,
                            "both Transfer-Encoding and Content-Length", "http_transfer_encoding")
        if not self._requests:
            no_body = (
                100 <= head.status < 200 or head.status in (204, 304)
                or self.request_method == "HEAD"
                or (self.request_method == "CONNECT" and 200 <= head.status < 300)
            )
            if no_body:
                # a 1xx other than 101 is interim: the real response follows as a message
                # of its own
                self._end(events)
                return
        if te_values:
            codings = _codings(te_values, 400 if self._requests else 502)
            chunked_last = codings[-1] == "chunked" and codings.count("chunked") == 1
            if self._requests:
                if head.version == "HTTP/1.0":
                    raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request",
                                    "http_transfer_encoding")
                if not chunked_last:
                    raise HttpError(400, f"Transfer-Encoding {', '.join(codings)!r}: chunked "
                                    "must be the last coding, once", "http_transfer_encoding")
                if len(codings) > 1:
                    raise HttpError(501, f"unsupported transfer coding {', '.join(codings[:-1])}"
                                    " (only chunked)", "http_transfer_encoding")
            elif not chunked_last:
                self._state = _CLOSE  # RFC 9112 6.3: read until the connection closes
                return
            self._state = _CHUNK_SIZE_LINE
            return
        if cl_values:
            length = _content_length(cl_values, 400 if self._requests else 502)
            if length == 0:
                self._end(events)
            else:
                self._remaining = length
                self._state = _LENGTH
            return
        if self._requests:
            self._end(events)
        else:
            self._state = _CLOSE

    def _parse_head(self, lines: list[bytes]) -> Head:
        start = lines[0][:-2]
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line[:-2].partition(b":")
            headers.append((name.decode("ascii").lower(), value.strip(_OWS).decode("latin-1")))
        raw = b"".join(lines) + b"\r\n"
        if not self._requests:
            m = _STATUS_LINE.fullmatch(start)
            if m is None:
                raise HttpError(502, f"malformed status line {start[:80]!r}", "http_response")
            version = _version(m.group(1), m.group(2), 502)
            status = int(m.group(3))
            if status < 100:
                raise HttpError(502, f"status {status} out of range", "http_response")
            return Head("", "", version, status, tuple(headers), raw)
        m = _REQUEST_LINE.fullmatch(start)
        if m is None:
            raise HttpError(400, f"malformed request line {start[:80]!r}", "http_request_line")
        method = m.group(1).decode("ascii")
        if method == "PRI":
            # the HTTP/2 connection preface (RFC 9113 3.4), never an HTTP/1.1 request: passed
            # on, an h2c-capable app would read HTTP/2 that L7 policy never decided
            raise HttpError(400, "method PRI is the HTTP/2 preface, not an HTTP/1.1 request",
                            "http_method")
        if ambiguous_method(method):
            raise HttpError(400, f"method {method!r}: methods are case-sensitive; did you mean "
                            f"{method.upper()!r}?", "http_method")
        target = m.group(2).decode("ascii")
        version = _version(m.group(3), m.group(4), 505)
        path, authority = _target(method, target)
        hosts = [v for k, v in headers if k == "host"]
        if len(hosts) > 1:
            raise HttpError(400, "more than one Host header", "http_host")
        if not hosts and version == "HTTP/1.1":
            raise HttpError(400, "no Host header (required in HTTP/1.1)", "http_host")
        host_header = hosts[0] if hosts else None
        if host_header is not None and _HOST_RE.fullmatch(host_header) is None:
            raise HttpError(400, f"malformed Host {host_header[:60]!r}", "http_host")
        if authority is not None:
            if host_header is not None and host_header.lower() != authority.lower():
                raise HttpError(400, f"Host {host_header[:60]!r} is not the target's authority "
                                f"{authority[:60]!r}", "http_host")
            host = authority
        else:
            host = host_header or ""
        return Head(method, target, version, 0, tuple(headers), raw, path, host)


def _too_long(state: int, size: int, limit: int, requests: bool, fields: bool) -> HttpError:
    if state == _CHUNK_SIZE_LINE:
        return HttpError(400, f"chunk-size line longer than {limit} bytes", "http_chunk_ext")
    if state == _TRAILER:
        return HttpError(431, f"trailer field longer than {limit} bytes", "http_trailer")
    if not fields and requests:
        return HttpError(414, f"request line longer than {limit} bytes", "http_head_too_large")
    return HttpError(431, f"header field line longer than {limit} bytes", "http_head_too_large")


def _check_field_line(line: bytes) -> None:
    name, sep, value = line[:-2].partition(b":")
    if not sep or _TOKEN_RE.fullmatch(name) is None:
        raise HttpError(400, f"malformed header line {line[:60]!r} (a token, then ':' with no "
                        "space before it)", "http_header_syntax")
    if _BAD_VALUE.search(value.strip(_OWS)) is not None:
        raise HttpError(400, f"control character in the value of header {name[:40]!r}",
                        "http_header_syntax")


def _version(major: bytes, minor: bytes, status: int) -> str:
    version = f"HTTP/{major.decode()}.{minor.decode()}"
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(status, f"unsupported version {version}", "http_version"
                        if status == 505 else "http_response")
    return version


def _target(method: str, target: str) -> tuple[str, str | None]:
    """(path with query, authority or None) of a request-target, by its form."""
    if "#" in target:
        raise HttpError(400, "request target with a fragment", "http_target")
    if _BAD_PERCENT.search(target.encode()) is not None:
        raise HttpError(400, f"bad percent-encoding in target {target[:60]!r}", "http_target")
    if method == "CONNECT":
        m = _AUTHORITY_FORM.fullmatch(target)
        if m is None or int(m.group(2)) > 65535:
            raise HttpError(400, f"CONNECT target {target[:60]!r} is not host:port",
                            "http_target")
        return "", target
    if target.startswith("/"):
        return target, None
    if target == "*":
        if method != "OPTIONS":
            raise HttpError(400, "asterisk-form target is for OPTIONS only", "http_target")
        return "*", None
    m = _ABSOLUTE.fullmatch(target)
    if m is None or m.group(1).lower() not in ("http", "https"):
        raise HttpError(400, f"request target {target[:60]!r} is neither a path nor an http(s) "
                        "URI", "http_target")
    authority, rest = m.group(2), m.group(3)
    if "@" in authority:
        raise HttpError(400, "userinfo in the request target", "http_target")
    if not authority or _HOST_RE.fullmatch(authority) is None:
        raise HttpError(400, f"malformed authority {authority[:60]!r}", "http_target")
    path = rest if rest.startswith("/") else "/" + rest
    return path, authority


def _codings(values: list[str], status: int) -> list[str]:
    codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    for c in codings:
        if not c or _TOKEN_RE.fullmatch(c.encode("latin-1")) is None:
            raise HttpError(status, f"malformed Transfer-Encoding {', '.join(values)[:60]!r}",
                            "http_transfer_encoding")
    return codings


def _content_length(values: list[str], status: int) -> int:
    items = [c.strip(" \t") for v in values for c in v.split(",")]
    first = items[0]
    for item in items:
        if not item.isascii() or _DIGITS.fullmatch(item) is None \
                or len(item) > MAX_CONTENT_LENGTH_DIGITS:
            raise HttpError(status, f"bad Content-Length {item[:20]!r} (ASCII digits, at most "
                            f"{MAX_CONTENT_LENGTH_DIGITS})", "http_content_length")
        if item != first:
            raise HttpError(status, f"conflicting Content-Length values {first!r} and "
                            f"{item[:20]!r}", "http_content_length")
    return int(first)


def _merge(events: list[Event]) -> list[Event]:
    """Adjacent Data events as one (fewer writes); one join per run, so linear in the bytes
    (thousands of tiny chunks in one read must not cost a quadratic copy)."""
    out: list[Event] = []
    run: list[bytes] = []
    for e in events:
        if isinstance(e, Data):
            run.append(e.raw)
            continue
        if run:
            out.append(Data(b"".join(run)))
            run = []
        out.append(e)
    if run:
        out.append(Data(b"".join(run)))
    return out


def denied_response(keep_alive: bool) -> bytes:
    """Istio's answer to a request denied by policy."""
    body = b"RBAC: access denied"
    conn = b"keep-alive" if keep_alive else b"close"
    return (b"HTTP/1.1 403 Forbidden\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\ncontent-type: text/plain\r\nconnection: " + conn + b"\r\n\r\n" + body)


_REASON_PHRASES: Final = {
    400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 501: "Not Implemented",
    505: "HTTP Version Not Supported",
}


def error_response(status: int, message: str) -> bytes:
    reason = _REASON_PHRASES.get(status, "Error")
    body = message.encode("utf-8", "replace")[:512] + b"\n"
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
            "content-type: text/plain\r\nconnection: close\r\n\r\n").encode() + body
