"""L7 policy inside the tunnel: an HTTP/1.1-aware :class:`~ztunnel.splice.Splice` (issues 4, 10).

Used for an inbound connection to an HTTP port when L7 rules apply to the pod. The downstream
side (the client, via HBONE or plaintext) is parsed request by request with
:class:`ztunnel.http1.MessageParser`; every request is authorized with its method, normalized
path (:mod:`meshapi.httppath`, the mesh-wide ``pathNormalization``; query left out), host and
headers; a denied one is answered ``403`` ``RBAC: access denied`` and its body discarded, and the
connection stays usable. The upstream side (the app) is parsed for response framing only.

Ordering with pipelining — ONE request at a time: once a request has been forwarded completely,
further bytes from the client are buffered (up to :data:`MAX_PENDING_BYTES`, then the client is
paused) until the app's response to it has been relayed completely. A 403 is thus always written
between complete responses, in request order, and the app never sees a request we have not
decided. (The price is no overlap of pipelined requests at the app; HTTP/1.1 clients rarely
pipeline.)

``Expect: 100-continue``: the head is decided before the body is sent; allowed, the app answers
the ``100`` itself; denied, the 403 answers it and the connection is closed after it (the client
may or may not send the body, so the stream cannot be re-synchronised). An ``Upgrade`` request
that is allowed and answered ``101``, or a ``CONNECT`` answered ``2xx``, turns the splice into a
plain byte pipe.

The event loop is never held, and every buffer is bounded:

* the client's unparsed bytes: :data:`MAX_PENDING_BYTES`, then its reading is paused;
* answers we write ourselves (403, 400, …): while the client's transport is over its write
  high-water mark (``pause_writing``), the client is neither parsed nor read, so a client that
  pipelines denied requests and never reads cannot pile answers up in our write buffer;
* the parser consumes every byte it is given or stops at a message end (see
  :mod:`ztunnel.http1`); the pump loop ends when a feed neither consumes nor emits;
* the head of each request must be complete within ``head_timeout`` seconds of its first byte
  (slowloris): ``408`` and close; a keep-alive connection with no request in flight and no byte
  of a new one is closed after ``idle_timeout`` seconds.

Malformed input from the client gets 400/414/431/501/505 (or just a close when part of the
request already went to the app), counted as ``nodemesh_ztunnel_rejected_total{reason}`` (the
reasons of :data:`ztunnel.http1.REJECT_REASONS`) and logged once with the peer; a malformed
response from the app aborts the connection (``reason="http_response"``). Nothing of it reaches
another connection. Metrics: Istio's ``istio_requests_total`` and
``istio_request_duration_milliseconds`` (reporter destination, ``request_protocol="http"``,
``response_code``); one JSON access-log line per request on stderr.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO, Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from meshapi.httppath import (
    DEFAULT_PATH_NORMALIZATION,
    PathNormalization,
    normalize_host,
    normalize_path,
    split_query,
)
from meshapi.policy import Attributes, HttpRequest
from ztunnel.connlog import rfc3339
from ztunnel.http1 import (
    Data,
    End,
    Head,
    HttpError,
    MessageParser,
    denied_response,
    error_response,
)
from ztunnel.metrics import ISTIO_LABELS, ConnLabels
from ztunnel.splice import Splice, SpliceResult, SpliceSide

log = logging.getLogger("ztunnel.l7")

MAX_PENDING_BYTES: Final = 1 << 20
#: the head of a request must be complete this long after its first byte (slowloris)
REQUEST_HEAD_TIMEOUT_SECONDS: Final = 30.0
#: a keep-alive connection with nothing in flight is closed after this long
IDLE_TIMEOUT_SECONDS: Final = 300.0
REQUEST_LABELS: Final = (*ISTIO_LABELS, "request_protocol", "response_code")


class L7Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("istio_requests", "HTTP requests", REQUEST_LABELS,
                                registry=registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds", "HTTP request duration (ms)", REQUEST_LABELS,
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
            registry=registry)


#: (attributes for the request) -> (allowed, reason)
Authorize = Callable[[Attributes], tuple[bool, str]]
#: counts one rejection (``ztunnel.metrics.Metrics.reject``)
Reject = Callable[[str], None]


def _no_reject(reason: str) -> None:
    del reason


def request_attributes(
    head: Head, mode: PathNormalization
) -> HttpRequest:
    """What policy sees of a request head: normalized path without query, normalized host.
    Raises :class:`HttpError` (``http_path``) when ``mode`` rejects the path."""
    path, _ = split_query(head.path)
    matched = normalize_path(path, mode)
    if matched is None:
        raise HttpError(400, f"path {path[:80]!r} is refused under path normalization "
                        f"{mode.value} (an encoded '/' or '\\', or a bad %-encoding)",
                        "http_path")
    return HttpRequest(head.method, matched, normalize_host(head.host), head.headers)


class _Down(SpliceSide):
    """Client → app."""

    l7: L7Splice

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.l7.from_client(data)

    def eof_received(self) -> bool:
        self.eof = True
        return self.l7.client_eof()

    def _flush_early(self) -> None:
        self.l7.flush_early()

    def pause_writing(self) -> None:
        # our own answers and the app's go to the client: stop the app and stop parsing
        super().pause_writing()
        self.l7.client_write_blocked(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.l7.client_write_blocked(False)

    def resume_reading(self) -> None:
        if not self.l7.client_may_read():
            return
        super().resume_reading()


class _Up(SpliceSide):
    """App → client."""

    l7: L7Splice

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.l7.from_app(data)

    def eof_received(self) -> bool:
        self.eof = True
        return self.l7.app_eof()

    def _flush_early(self) -> None:
        self.l7.flush_early()

    def pause_writing(self) -> None:
        self.l7.pause_client("app_write")

    def resume_writing(self) -> None:
        self.l7.resume_client("app_write")


class L7Splice(Splice):
    def __init__(
        self,
        on_done: Callable[[SpliceResult], None],
        *,
        attributes: Attributes,
        authorize: Authorize,
        metrics: L7Metrics,
        labels: ConnLabels,
        access_log: IO[str] | None = None,
        reject: Reject = _no_reject,
        path_normalization: Callable[[], PathNormalization] = lambda: DEFAULT_PATH_NORMALIZATION,
        head_timeout: float = REQUEST_HEAD_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(on_done)
        down, up = _Down(self, "downstream"), _Up(self, "upstream")
        down.l7 = up.l7 = self
        down.peer, up.peer = up, down
        self.downstream, self.upstream = down, up
        self._attrs = attributes
        self._authorize = authorize
        self._metrics = metrics
        self._labels = labels
        self._access_log = access_log
        self._reject = reject
        self._path_mode = path_normalization
        self._head_timeout = head_timeout
        self._idle_timeout = idle_timeout
        self._req = MessageParser(requests=True)
        self._resp = MessageParser(requests=False)
        self._pending = bytearray()
        #: why the client's reading is paused: "pending", "client_write", "app_write"
        self._paused: set[str] = set()
        self._write_blocked = False
        #: the request being relayed (forwarded or being denied) and its start time
        self._current: Head | None = None
        self._started = 0.0
        self._denied = False
        self._request_done = False
        #: the app's (final) response head to the current request
        self._response: Head | None = None
        self._tunnel = False
        self._close_after = False
        self._client_eof = False
        self._eof_propagated = False
        #: the client's input was rejected (counted and answered once)
        self._rejected = False
        #: a side is gone: no timer is armed again
        self._gone = False
        self._timer: asyncio.TimerHandle | None = None
        #: "idle" or "head": what the running timer watches
        self._timer_kind = ""
        self.requests = 0
        self._arm_timers()

    # -- client → app ----------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self._tunnel:
            self._to_app(data)
            return
        if self._close_after:
            return  # answered and closing: what the client still sends is dropped
        self._pending += data
        self._pump()
        if len(self._pending) > MAX_PENDING_BYTES:
            self.pause_client("pending")

    def _pump(self) -> None:
        while self._pending and not self._tunnel:
            if self._current is not None and self._request_done:
                break  # one request at a time: wait for the response to finish
            if self._close_after:
                self._pending.clear()
                break
            if self._write_blocked:
                break  # the client does not read our answers: parse no more of it for now
            try:
                events, used = self._req.feed(self._pending)
            except HttpError as exc:
                self._client_error(exc)
                return
            del self._pending[:used]
            for event in events:
                if self._rejected:
                    return  # _request_head refused it (its path): nothing more of it goes on
                if isinstance(event, Head):
                    self._request_head(event)
                elif isinstance(event, Data):
                    if not self._denied:
                        self._to_app(event.raw)
                elif isinstance(event, End):
                    self._request_end()
            if not events and used == 0:
                break
        if len(self._pending) < MAX_PENDING_BYTES // 2:
            self.resume_client("pending")
        self._arm_timers()
        if self._client_eof and not self._pending and self._current is None:
            self._propagate_client_eof()

    def _request_head(self, head: Head) -> None:
        try:
            request = request_attributes(head, self._path_mode())
        except HttpError as exc:
            self._client_error(exc)
            return
        self._current = head
        self._started = time.monotonic()
        self._request_done = False
        self._response = None
        self.requests += 1
        allowed, reason = self._authorize(replace(self._attrs, request=request))
        self._denied = not allowed
        if allowed:
            self._resp.request_method = head.method
            self._to_app(head.raw)
            return
        log.info("event=http_denied method=%s path=%r peer=%s reason=%r", head.method,
                 head.path, self._peer(), reason)
        if head.expect_continue:
            # the client waits for 100 before sending its body, or sends it anyway: answer now
            # and close, the stream cannot be re-synchronised
            self._to_client(denied_response(False))
            self._finish_request(403)
            self._close_after = True
            self._pending.clear()
            self._close_client()

    def _request_end(self) -> None:
        head = self._current
        if head is None:
            return  # already answered (denied Expect: 100-continue, rejected path)
        self._request_done = True
        self._req.next_message()
        if self._denied:
            keep = head.keep_alive and not self._close_after
            self._to_client(denied_response(keep))
            self._finish_request(403)
            if not keep:
                self._close_after = True
                self._close_client()
        elif self._response is not None and self._resp.idle:
            # the app answered before the request ended (e.g. an early 413): done now
            self._finish_request(self._response.status)

    # -- app → client ----------------------------------------------------------------------

    def from_app(self, data: bytes) -> None:
        if self._tunnel:
            self._to_client(data)
            return
        buf = data
        while buf:
            if self._current is None or self._denied:
                self._app_error("the app sent bytes with no request outstanding")
                return
            try:
                events, used = self._resp.feed(buf)
            except HttpError as exc:
                self._app_error(f"malformed response from the app: {exc}")
                return
            buf = buf[used:]
            for event in events:
                if isinstance(event, Head):
                    self._to_client(event.raw)
                    if not 100 <= event.status < 200 or event.status == 101:
                        self._response = event
                elif isinstance(event, Data):
                    self._to_client(event.raw)
                elif isinstance(event, End):
                    self._response_end()
                    if self._tunnel:
                        if buf:
                            self._to_client(bytes(buf))
                        return
            if used == 0 and not events:
                break

    def _app_error(self, message: str) -> None:
        self._reject("http_response")
        log.warning("event=http_rejected reason=http_response peer=%s dst=%s:%d error=%r",
                    self._peer(), self._attrs.destination_ip, self._attrs.destination_port,
                    message)
        self.abort(message)

    def _response_end(self) -> None:
        resp = self._resp.head
        self._resp.next_message()
        if resp is not None and 100 <= resp.status < 200 and resp.status != 101:
            return  # interim (100 Continue): the final response follows
        head = self._current
        assert head is not None and resp is not None
        if (resp.status == 101 and head.upgrade) or (
                head.method == "CONNECT" and 200 <= resp.status < 300):
            self._tunnel = True
            self._cancel_timer()
            self._finish_request(resp.status)
            pending, self._pending = bytes(self._pending), bytearray()
            self.resume_client("pending")
            if pending:
                self._to_app(pending)
            return
        if not self._request_done:
            return  # the request body is still coming; finished at its end
        self._finish_request(resp.status)
        if not (head.keep_alive and resp.keep_alive):
            self._close_after = True
            self._close_client()
            return
        self._pump()

    # -- reading and writing the client ------------------------------------------------------

    def pause_client(self, reason: str) -> None:
        self._paused.add(reason)
        SpliceSide.pause_reading(self.downstream)

    def resume_client(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused:
            SpliceSide.resume_reading(self.downstream)

    def client_may_read(self) -> bool:
        return not self._paused

    def client_write_blocked(self, blocked: bool) -> None:
        """The client's transport is over (True) or back under (False) its high-water mark."""
        self._write_blocked = blocked
        if blocked:
            self.pause_client("client_write")
            self._arm_timers()
            return
        self.resume_client("client_write")
        self._pump()

    # -- timers ------------------------------------------------------------------------------

    def _arm_timers(self) -> None:
        """One timer at a time: ``head`` while a head is arriving, ``idle`` while nothing is
        in flight (or the client reads none of our writes), none while a request or its
        response is being relayed."""
        if self._tunnel or self._close_after or self._rejected or self._gone:
            self._cancel_timer()
            return
        if self._write_blocked:
            kind = "idle"  # the client reads nothing of what we send
        elif self._req.reading_head and self._current is None:
            kind = "head"
        elif self._current is None and self._req.idle and not self._pending:
            kind = "idle"
        else:
            kind = ""
        if kind == self._timer_kind:
            return
        self._cancel_timer()
        if not kind:
            return
        delay = self._head_timeout if kind == "head" else self._idle_timeout
        self._timer_kind = kind
        self._timer = asyncio.get_running_loop().call_later(delay, self._timed_out, kind)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_kind = None, ""

    def _timed_out(self, kind: str) -> None:
        self._timer, self._timer_kind = None, ""
        if kind == "head":
            self._client_error(HttpError(
                408, f"request head not complete within {self._head_timeout:g} s",
                "http_head_timeout"))
            return
        self._reject("http_idle_timeout")
        log.info("event=http_idle_timeout peer=%s src=%s idle_seconds=%g", self._peer(),
                 self._attrs.source_ip, self._idle_timeout)
        self._close_after = True
        self._pending.clear()
        self._close_client()

    def _side_lost(self, side: SpliceSide, exc: Exception | None) -> None:
        self._cancel_timer()
        self._gone = True
        super()._side_lost(side, exc)

    # -- shared ----------------------------------------------------------------------------

    def _peer(self) -> str:
        return self._attrs.principal or f"(no mTLS identity) {self._attrs.source_ip}"

    def _finish_request(self, status: int) -> None:
        head = self._current
        if head is None:
            return
        elapsed_ms = (time.monotonic() - self._started) * 1000.0
        self._current = None
        self._response = None
        self._request_done = False
        denied = self._denied
        self._denied = False
        values = (*self._labels.values(), "http", str(status))
        self._metrics.requests.labels(*values).inc()
        self._metrics.duration.labels(*values).observe(elapsed_ms)
        line = json.dumps({
            "msg": "request", "time": rfc3339(datetime.now(UTC)),
            "src": str(self._attrs.source_ip), "dst": f"{self._attrs.destination_ip}:"
            f"{self._attrs.destination_port}", "srcIdentity": self._attrs.principal,
            "method": head.method, "path": head.path, "host": head.host,
            "status": status, "durationMs": round(elapsed_ms, 3),
            "rbac": "denied" if denied else "allowed",
        }, separators=(",", ":"))
        stream = self._access_log if self._access_log is not None else sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def _client_error(self, exc: HttpError) -> None:
        """Reject the client's input: counted and logged once, answered when nothing of the
        current request went to the app or to the client yet, then the connection closes."""
        if self._rejected or self._close_after:
            return
        self._rejected = True
        self._cancel_timer()
        self._reject(exc.reason)
        log.warning("event=http_rejected reason=%s status=%d peer=%s src=%s dst=%s:%d error=%r",
                    exc.reason, exc.status, self._peer(), self._attrs.source_ip,
                    self._attrs.destination_ip, self._attrs.destination_port, str(exc))
        if self._current is None or self._denied:
            self._to_client(error_response(exc.status, str(exc)))
        self._close_after = True
        self._pending.clear()
        self._close_client()

    def _to_app(self, data: bytes) -> None:
        t = self.upstream.transport
        if data and t is not None and not t.is_closing():
            t.write(data)

    def _to_client(self, data: bytes) -> None:
        t = self.downstream.transport
        if data and t is not None and not t.is_closing():
            t.write(data)

    def _close_client(self) -> None:
        t = self.downstream.transport
        if t is not None and not t.is_closing():
            t.close()  # flushes what is buffered (the 403 or error answer) first
        up = self.upstream.transport
        if up is not None and not up.is_closing() and (self._current is None or self._denied):
            up.close()

    def flush_early(self) -> None:
        """Both sides attached: bytes held before go through the parsers like any others."""
        down, up = self.downstream, self.upstream
        held_down, down.early, down.early_bytes = down.early, [], 0
        held_up, up.early, up.early_bytes = up.early, [], 0
        for chunk in held_down:
            self.from_client(chunk)
        for chunk in held_up:
            self.from_app(chunk)

    def client_eof(self) -> bool:
        self._client_eof = True
        if self._tunnel or (not self._pending and self._current is None):
            return self._propagate_client_eof()
        return True  # finish the requests we hold first; _pump propagates it

    def _propagate_client_eof(self) -> bool:
        if self._eof_propagated:
            return True
        self._eof_propagated = True
        return SpliceSide.eof_received(self.downstream)

    def app_eof(self) -> bool:
        if not self._tunnel and self._current is not None and not self._denied:
            try:
                events = self._resp.eof()
            except HttpError:
                events = []
            if any(isinstance(e, End) for e in events):
                self._response_end()
        return SpliceSide.eof_received(self.upstream)


def ip(value: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None
