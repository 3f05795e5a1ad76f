"""The agent's end of the CNI plugin: an asyncio Unix-socket server dispatching to a backend.

Invariants:

* The socket file is created mode 0600 (bound under a temporary name, chmod-ed, then renamed
  into place); a stale socket file is replaced, a live one (another agent answers on it) or a
  non-socket file at the path is an error (:mod:`node_agent.unixsock`). ``close()`` removes the
  file only while it is still the one this server bound.
* Every connection gets exactly one response frame (``protocol.response_frame``) unless the
  client is gone. Nothing the client sends or the backend raises can make a connection hang:
  reading the request is bounded in bytes and time, each backend call in time.
* At most ``max_connections`` connections are served at once; beyond that the server stops
  accepting and the kernel's listen backlog holds the rest (the plugin retries its connect
  until its own deadline): bounded memory, natural backpressure.
* Each connection is one task owned by the server (no fire-and-forget): ``close()`` stops
  accepting, lets running requests finish for ``drain_timeout`` seconds, then cancels the rest
  and waits for them.
* A DEL the agent cannot even parse is answered with success: a pod must always be deletable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from node_agent import unixsock
from node_agent.cni import protocol
from node_agent.cni.errors import CniCode, CniFailure, CniRequestError, CniServerError
from node_agent.cni.protocol import (
    AddRequest,
    CheckRequest,
    Command,
    DelRequest,
    Envelope,
    StatusRequest,
)
from node_agent.metrics import AgentMetrics, cni_command_label

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/nodemesh/cni.sock"


class CniBackend(Protocol):
    async def add(self, req: AddRequest) -> None:
        """Return when redirection is in place or the pod is not enrolled; raise
        :class:`~node_agent.cni.errors.CniFailure` to fail the pod sandbox."""

    async def delete(self, req: DelRequest) -> None: ...

    async def check(self, req: CheckRequest) -> None: ...


class CniServer(unixsock.Served):
    """Serves the CNI plugin's requests on ``path``.

    Use ``async with CniServer(path, backend):`` or ``await server.serve(stop)``.

    ``not_ready`` answers the CNI 1.1 STATUS: ``None`` when the agent can serve ADD, else the
    reason it cannot (STATUS then fails with code 50 and that reason, and runtimes that use
    STATUS report the node's network not ready). Without it, a serving agent is ready.
    """

    def __init__(
        self,
        path: str,
        backend: CniBackend,
        *,
        max_request_bytes: int = protocol.MAX_REQUEST_BYTES,
        read_timeout: float = 10.0,
        backend_timeout: float = 55.0,
        write_timeout: float = 10.0,
        max_connections: int = 64,
        drain_timeout: float = 30.0,
        not_ready: Callable[[], str | None] | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.path = path
        self._backend = backend
        self._max_request_bytes = max_request_bytes
        self._read_timeout = read_timeout
        # below the plugin's 60 s, so the runtime gets our explanation rather than its timeout
        self._backend_timeout = backend_timeout
        self._write_timeout = write_timeout
        self._drain_timeout = drain_timeout
        self._not_ready = not_ready
        self._slots = asyncio.Semaphore(max_connections)
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._metrics = metrics or AgentMetrics()
        self._metrics.init_cni()
        self.ready = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._listener is not None:
            raise CniServerError(f"CNI server at {self.path} already started")
        self._listener = self._bind()
        self._accept_task = asyncio.create_task(self._accept_loop(), name=f"cni-accept {self.path}")
        self.ready.set()
        log.info("serving the CNI plugin on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, drain running requests (then cancel), remove the socket file."""
        self.ready.clear()
        # first, before any await: new plugins fail fast (and ADD is retried by the kubelet)
        self._unlink_if_ours()
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._conns:
            _, pending = await asyncio.wait(set(self._conns), timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "cancelled %d CNI request(s) still running after %g s of drain",
                    len(pending),
                    self._drain_timeout,
                )
                await asyncio.wait(pending)

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    @property
    def counts(self) -> Mapping[tuple[str, str], int]:
        """Requests answered, by (command, outcome): outcome is ``ok``, ``failed`` (the backend
        refused or broke) or ``invalid`` (the request was; ``command`` is ``unknown`` when it was
        not one of ADD, DEL, CHECK, STATUS). Read from the metrics registry."""
        return self._metrics.cni_counts()

    # --- socket ------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock, self._bound = unixsock.bind(
            self.path, "--cni-socket", CniServerError, tmp_prefix="cni"
        )
        return sock

    def _unlink_if_ours(self) -> None:
        unixsock.unlink_if_ours(self.path, self._bound)
        self._bound = None

    # --- connections -------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._serve_conn(conn), name="cni-request")
            self._conns.add(task)
            task.add_done_callback(self._conn_done)

    def _conn_done(self, task: asyncio.Task[None]) -> None:
        self._conns.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("CNI connection handler failed", exc_info=task.exception())

    async def _serve_conn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            reader, writer = await asyncio.open_unix_connection(
                sock=conn, limit=self._max_request_bytes
            )
        except BaseException:
            conn.close()
            raise
        try:
            response = await self._respond(reader)
            writer.write(response)
            async with asyncio.timeout(self._write_timeout):
                await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            log.warning("CNI plugin went away before its answer was written: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self._write_timeout):
                    await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The whole request up to EOF. Oversized requests are read to the end (and dropped)
        so that the plugin gets the answer instead of a reset connection."""
        chunks: list[bytes] = []
        size = 0
        oversized = False
        try:
            async with asyncio.timeout(self._read_timeout):
                while chunk := await reader.read(65536):
                    size += len(chunk)
                    if size > self._max_request_bytes:
                        oversized = True
                        chunks.clear()
                    elif not oversized:
                        chunks.append(chunk)
        except TimeoutError:
            raise CniRequestError(
                f"request not complete after {self._read_timeout:g} s ({size} bytes read)",
                "the plugin sends its whole request at once and then shuts down its write side",
                CniCode.AGENT_PROTOCOL,
            ) from None
        if oversized:
            raise CniRequestError(
                f"request of {size} bytes is larger than the {self._max_request_bytes} byte limit",
                f"the network configuration may be at most {protocol.MAX_CONFIG_BYTES} bytes",
                CniCode.INVALID_CONFIG,
            )
        return b"".join(chunks)

    async def _respond(self, reader: asyncio.StreamReader) -> bytes:
        started = time.monotonic()
        command, result, response = await self._answer(reader)
        label = cni_command_label(command)
        self._metrics.cni_requests.labels(label, result).inc()
        self._metrics.cni_duration.labels(label).observe(time.monotonic() - started)
        return response

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str | None, str, bytes]:
        """(command, result, response frame)."""
        try:
            data = await self._read_request(reader)
            envelope = protocol.parse_request(data)
        except CniRequestError as exc:
            if exc.command == Command.DEL.value:
                log.warning("CNI DEL with an invalid request answered with success: %s", exc.msg)
                return exc.command, "invalid", protocol.response_frame(0, b"")
            log.warning("invalid CNI request: %s", exc.msg)
            return exc.command, "invalid", self._error(exc.cni_version, exc)
        command = envelope.command.value
        try:
            stdout = await self._dispatch(envelope)
        except CniFailure as exc:
            log.warning("CNI %s failed: %s", _describe(envelope), exc.msg)
            return command, "failed", self._error(envelope.cni_version, exc)
        return command, "ok", protocol.response_frame(0, stdout)

    async def _dispatch(self, envelope: Envelope) -> bytes:
        req = envelope.request
        if isinstance(req, StatusRequest):
            reason = self._not_ready() if self._not_ready is not None else None
            if reason is not None:
                raise CniFailure(
                    f"nodemesh node agent is not ready to add pods: {reason}",
                    "check the node agent's log",
                    CniCode.NOT_AVAILABLE,
                )
            return b""
        what = _describe(envelope)
        try:
            async with asyncio.timeout(self._backend_timeout) as deadline:
                if isinstance(req, AddRequest):
                    await self._backend.add(req)
                elif isinstance(req, DelRequest):
                    await self._backend.delete(req)
                else:
                    await self._backend.check(req)
        except CniFailure:
            raise
        except TimeoutError as exc:
            if not deadline.expired():
                raise _internal(what, exc) from exc
            raise CniFailure(
                f"nodemesh node agent: {what} did not finish within "
                f"{self._backend_timeout:g} s; the kubelet will retry",
                "check the node agent's log for this pod",
                CniCode.TRY_AGAIN_LATER,
            ) from None
        except Exception as exc:
            log.exception("CNI backend failed on %s", what)
            raise _internal(what, exc) from exc
        log.info("CNI %s done", what)
        if isinstance(req, AddRequest):
            assert envelope.prev_result is not None
            return protocol.success_output(envelope.cni_version, envelope.prev_result)
        return b""

    @staticmethod
    def _error(cni_version: str | None, exc: CniFailure) -> bytes:
        version = cni_version or protocol.SUPPORTED_VERSIONS[-1]
        return protocol.response_frame(
            1, protocol.error_output(version, exc.code, exc.msg, exc.details)
        )


def _describe(envelope: Envelope) -> str:
    req = envelope.request
    if isinstance(req, StatusRequest):
        return "STATUS"
    pod = f"{req.pod_namespace}/{req.pod_name}"
    return f"{envelope.command.value} of pod {pod} (container {req.container_id})"


def _internal(what: str, exc: BaseException) -> CniFailure:
    return CniFailure(
        f"nodemesh node agent failed on {what}: {type(exc).__name__}: {exc}",
        "this is a bug in the node agent; its log has the traceback",
        CniCode.AGENT_INTERNAL,
    )
