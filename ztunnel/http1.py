"""HTTP/1.1 message framing, sans I/O: bytes in, events out (issue 4, L7 policy).

:class:`MessageParser` parses ONE direction of a connection (requests, or responses) and emits
:class:`Head`, :class:`Data` and :class:`End` events. Data events carry the *raw* bytes of the
body as they were on the wire (chunk framing included), so a proxy forwards exactly what it read
and the parser only tells it where messages begin and end.

Invariants and limits:

* :meth:`MessageParser.feed` consumes input only up to the end of the current message and
  returns how many bytes it used; the caller keeps the rest (the next pipelined request) and feeds
  it when it is ready for the next message (:meth:`MessageParser.next_message`).
* Head at most :data:`MAX_HEAD_BYTES`, at most :data:`MAX_HEADERS` fields, chunk-size lines at
  most :data:`MAX_LINE_BYTES`: beyond that, :class:`HttpError` (431/400), as for any malformed
  input (bad request line, bad header line, both Content-Length and Transfer-Encoding, a transfer
  coding other than ``chunked``, conflicting Content-Length, bad chunk size).
* Requests without Content-Length or chunked have no body. Responses: 1xx, 204, 304 and answers
  to HEAD have none; a 1xx other than 101 is followed by the real response; a response without
  framing runs until the connection closes (:meth:`MessageParser.eof`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ztunnel.errors import ZtunnelError

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
MAX_LINE_BYTES: Final = 4096

_TOKEN_CHARS: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                                b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HttpError(ZtunnelError):
    """Malformed or over-limit HTTP/1.1 input; ``status`` is what to answer a client with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
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

    @property
    def path(self) -> str:
        """The path of the target, query included (Istio matches ``:path`` as sent)."""
        t = self.target
        if t.startswith(("http://", "https://")):
            rest = t.split("://", 1)[1]
            slash = rest.find("/")
            return "/" if slash < 0 else rest[slash:]
        return t

    @property
    def host(self) -> str:
        h = self.get("host")
        if h is not None:
            return h
        if self.target.startswith(("http://", "https://")):
            return self.target.split("://", 1)[1].split("/", 1)[0]
        return ""


@dataclass(frozen=True, slots=True)
class Data:
    raw: bytes


@dataclass(frozen=True, slots=True)
class End:
    pass


Event = Head | Data | End

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _CLOSE, _DONE = range(8)


class MessageParser:
    def __init__(self, *, requests: bool) -> None:
        self._requests = requests
        self._state = _HEAD
        self._remaining = 0
        #: response side: the method of the request being answered (HEAD has no body)
        self.request_method = "GET"
        self.head: Head | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def idle(self) -> bool:
        """No byte of a message has been consumed yet."""
        return self._state == _HEAD and self.head is None

    def next_message(self) -> None:
        self._state = _HEAD
        self.head = None

    def feed(self, buf: bytes | bytearray) -> tuple[list[Event], int]:
        """Parse from the start of ``buf``; returns events and the bytes consumed (never past
        the end of the current message). Raises :class:`HttpError`."""
        events: list[Event] = []
        pos = 0
        n = len(buf)
        while pos < n and self._state != _DONE:
            s = self._state
            if s == _HEAD:
                end = buf.find(b"\r\n\r\n", pos, pos + MAX_HEAD_BYTES + 4)
                if end < 0:
                    if n - pos > MAX_HEAD_BYTES:
                        raise HttpError(431, f"header section exceeds {MAX_HEAD_BYTES} bytes")
                    break
                raw = bytes(buf[pos : end + 4])
                pos = end + 4
                head = self._parse_head(raw)
                self.head = head
                events.append(head)
                self._frame(head, events)
            elif s == _LENGTH:
                take = min(self._remaining, n - pos)
                events.append(Data(bytes(buf[pos : pos + take])))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._end(events)
            elif s == _CLOSE:
                events.append(Data(bytes(buf[pos:])))
                pos = n
            elif s in (_CHUNK_SIZE, _TRAILER):
                nl = buf.find(b"\r\n", pos, pos + MAX_LINE_BYTES + 2)
                if nl < 0:
                    if n - pos > MAX_LINE_BYTES:
                        raise HttpError(400, "chunk-size or trailer line too long")
                    break
                line = bytes(buf[pos:nl])
                events.append(Data(bytes(buf[pos : nl + 2])))
                pos = nl + 2
                if s == _CHUNK_SIZE:
                    size_text = line.split(b";", 1)[0].strip()
                    try:
                        if not size_text or len(size_text) > 16:
                            raise ValueError
                        size = int(size_text, 16)
                    except ValueError:
                        raise HttpError(400, f"bad chunk size {line[:40]!r}") from None
                    if size == 0:
                        self._state = _TRAILER
                    else:
                        self._remaining = size
                        self._state = _CHUNK_DATA
                elif line == b"":
                    self._end(events)
            elif s == _CHUNK_DATA:
                take = min(self._remaining, n - pos)
                events.append(Data(bytes(buf[pos : pos + take])))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_CRLF
            elif s == _CHUNK_CRLF:
                if buf[pos : pos + 2] != b"\r\n"[: n - pos]:
                    raise HttpError(400, "chunk data not followed by CRLF")
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise HttpError(400, "chunk data not followed by CRLF")
                events.append(Data(b"\r\n"))
                pos += 2
                self._state = _CHUNK_SIZE
        return _merge(events), pos

    def eof(self) -> list[Event]:
        """The peer closed: ends a read-until-close body; elsewhere mid-message is an error."""
        if self._state == _CLOSE:
            self._state = _DONE
            return [End()]
        if self.idle or self._state == _DONE:
            return []
        raise HttpError(400, "connection closed in the middle of a message")

    def _end(self, events: list[Event]) -> None:
        self._state = _DONE
        events.append(End())

    def _frame(self, head: Head, events: list[Event]) -> None:
        te = head.tokens("transfer-encoding")
        lengths = {v.strip() for k, v in head.headers if k == "content-length"}
        if te and lengths:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if not self._requests:
            no_body = (
                100 <= head.status < 200 or head.status in (204, 304)
                or self.request_method == "HEAD"
            )
            if no_body:
                if 100 <= head.status < 200 and head.status != 101:
                    # interim: the real response follows; report it as a message of its own
                    self._end(events)
                    return
                self._end(events)
                return
        if te:
            if te != {"chunked"}:
                raise HttpError(501, f"unsupported transfer coding {sorted(te)}")
            self._state = _CHUNK_SIZE
            return
        if lengths:
            if len(lengths) > 1:
                raise HttpError(400, "conflicting Content-Length values")
            text = lengths.pop()
            if not text.isdigit() or len(text) > 18:
                raise HttpError(400, f"bad Content-Length {text[:20]!r}")
            self._remaining = int(text)
            if self._remaining == 0:
                self._end(events)
            else:
                self._state = _LENGTH
            return
        if self._requests:
            self._end(events)
        else:
            self._state = _CLOSE

    def _parse_head(self, raw: bytes) -> Head:
        lines = raw[:-4].split(b"\r\n")
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} header fields")
        start = lines[0]
        try:
            text = start.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "non-ASCII start line") from None
        parts = text.split(" ", 2)
        method = target = ""
        status = 0
        if self._requests:
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise HttpError(400, f"malformed request line {text[:80]!r}")
            method, target, version = parts
            if not set(method.encode()) <= _TOKEN_CHARS:
                raise HttpError(400, f"malformed method {method[:20]!r}")
            if " " in target:
                raise HttpError(400, "malformed request target")
        else:
            if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
                raise HttpError(502, f"malformed status line {text[:80]!r}")
            version, status = parts[0], int(parts[1])
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, f"unsupported version {version[:20]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or not set(name) <= _TOKEN_CHARS:
                raise HttpError(400, f"malformed header line {line[:60]!r}")
            try:
                headers.append((name.decode("ascii").lower(), value.strip().decode("latin-1")))
            except UnicodeDecodeError:
                raise HttpError(400, "malformed header name") from None
        return Head(method, target, version, status, tuple(headers), raw)


def _merge(events: list[Event]) -> list[Event]:
    """Adjacent Data events as one (fewer writes)."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, Data) and out and isinstance(out[-1], Data):
            prev = out[-1]
            assert isinstance(prev, Data)
            out[-1] = Data(prev.raw + e.raw)
        else:
            out.append(e)
    return out


def denied_response(keep_alive: bool) -> bytes:
    """Istio's answer to a request denied by policy."""
    body = b"RBAC: access denied"
    conn = b"keep-alive" if keep_alive else b"close"
    return (b"HTTP/1.1 403 Forbidden\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\ncontent-type: text/plain\r\nconnection: " + conn + b"\r\n\r\n" + body)


def error_response(status: int, message: str) -> bytes:
    reason = {400: "Bad Request", 431: "Request Header Fields Too Large",
              501: "Not Implemented", 505: "HTTP Version Not Supported"}.get(status, "Error")
    body = message.encode("utf-8", "replace")[:512] + b"\n"
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
            "content-type: text/plain\r\nconnection: close\r\n\r\n").encode() + body
