"""Client of the agent↔ztunnel protocol (``meshapi.zds``) over a Unix ``SOCK_SEQPACKET`` socket.

Invariants:

* One :class:`ZdsConnection` per ztunnel connection; it is used by one coroutine at a time
  (requests are sent and acknowledged one after the other, guarded by a lock).
* A reader owned by the connection (started in ``__aenter__``, cancelled and awaited in
  ``__aexit__``) receives every packet: acks complete the waiting request, end-of-file or garbage
  marks the connection closed and fails whatever waits — the owner then reconnects.
* ``served`` mirrors the ztunnel's view: the ``hello`` pods, plus acknowledged adds, minus
  acknowledged deletes; after ``snapshot_complete`` only the pods added or kept since ``hello``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Callable
from types import TracebackType

from meshapi import zds
from meshapi.errors import WireError
from meshapi.model import Workload
from node_agent.errors import ZdsError

log = logging.getLogger(__name__)


class ZdsRejected(ZdsError):
    """The ztunnel answered a request with an error: that pod failed, the connection is fine."""


class ZdsConnection:
    def __init__(
        self,
        sock: socket.socket,
        ack_timeout: float = zds.ACK_TIMEOUT_SECONDS,
        on_close: Callable[[], None] | None = None,
        redirection: str | None = None,
    ) -> None:
        sock.setblocking(False)
        self._redirection = redirection
        self._sock = sock
        self._ack_timeout = ack_timeout
        self._on_close = on_close
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[zds.Ack]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._since_hello: set[str] = set()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.hello = zds.Hello(())
        self.served: set[str] = set()

    @classmethod
    async def connect(
        cls,
        path: str,
        ack_timeout: float = zds.ACK_TIMEOUT_SECONDS,
        on_close: Callable[[], None] | None = None,
        redirection: str | None = None,
    ) -> ZdsConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(ack_timeout):
                await asyncio.get_running_loop().sock_connect(sock, path)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise ZdsError(
                f"cannot connect to the ztunnel at {path}: {exc} — is it running?"
            ) from exc
        return cls(sock, ack_timeout, on_close, redirection)

    async def __aenter__(self) -> ZdsConnection:
        try:
            await self._read_hello()
        except BaseException:
            self._sock.close()
            raise
        self._reader = asyncio.create_task(self._read_loop(), name="zds-reader")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._mark_closed("closed by the agent")
        self._sock.close()

    async def _recv(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self._sock, zds.MAX_MESSAGE_BYTES + 1)

    async def _read_hello(self) -> None:
        try:
            async with asyncio.timeout(self._ack_timeout):
                data = await self._recv()
        except (OSError, TimeoutError) as exc:
            raise ZdsError(f"no hello from the ztunnel within {self._ack_timeout}s: {exc}") from exc
        if not data:
            raise ZdsError("the ztunnel closed the connection before its hello")
        try:
            msg = zds.decode(data)
        except WireError as exc:
            raise ZdsError(f"bad hello from the ztunnel: {exc}") from exc
        if not isinstance(msg, zds.Hello):
            raise ZdsError(f"expected hello from the ztunnel, got {msg.type}")
        if msg.version != zds.PROTOCOL_VERSION:
            raise ZdsError(
                f"ztunnel speaks ZDS version {msg.version}, agent {zds.PROTOCOL_VERSION} — "
                "upgrade the older of the two"
            )
        self.hello = msg
        self.served = set(msg.pods)

    async def _read_loop(self) -> None:
        reason = "the ztunnel closed the connection"
        try:
            while True:
                data = await self._recv()
                if not data:
                    break
                msg = zds.decode(data)
                if not isinstance(msg, zds.Ack):
                    reason = f"unexpected {msg.type} message from the ztunnel"
                    break
                fut = self._pending.pop(msg.seq, None)
                if fut is None:
                    reason = f"ack for unknown seq {msg.seq} from the ztunnel"
                    break
                if not fut.done():
                    fut.set_result(msg)
        except WireError as exc:
            reason = f"malformed message from the ztunnel: {exc}"
        except OSError as exc:
            reason = f"ztunnel connection failed: {exc}"
        self._mark_closed(reason)

    def _mark_closed(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ZdsError(reason))
        self._pending.clear()
        if self._on_close is not None:
            self._on_close()

    async def _send(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if fds:
                    socket.send_fds(self._sock, [data], fds)
                else:
                    self._sock.send(data)
                return
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._sock, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._sock)
            except OSError as exc:
                self._mark_closed(f"sending to the ztunnel failed: {exc}")
                raise ZdsError(self.close_reason) from exc

    async def _request(self, make: Callable[[int], zds.Message], what: str, fds: list[int]) -> None:
        async with self._lock:
            if self.closed.is_set():
                raise ZdsError(self.close_reason)
            seq = next(self._seq)
            fut: asyncio.Future[zds.Ack] = asyncio.get_running_loop().create_future()
            self._pending[seq] = fut
            try:
                await self._send(zds.encode(make(seq)), fds)
                async with asyncio.timeout(self._ack_timeout):
                    ack = await fut
            except TimeoutError as exc:
                self._mark_closed(
                    f"the ztunnel did not acknowledge {what} within {self._ack_timeout}s — "
                    "is it overloaded or stuck?"
                )
                raise ZdsError(self.close_reason) from exc
            finally:
                self._pending.pop(seq, None)
        if ack.error is not None:
            raise ZdsRejected(f"the ztunnel refused {what}: {ack.error}")

    async def add(self, workload: Workload, netns_fd: int) -> None:
        """Hand the pod and its netns to the ztunnel; the caller keeps (and closes) the fd."""
        uid = workload.key
        await self._request(
            lambda s: zds.AddPod(s, workload, self._redirection), f"add of pod {uid}", [netns_fd]
        )
        self.served.add(uid)
        self._since_hello.add(uid)

    async def keep(self, uid: str) -> None:
        await self._request(lambda s: zds.KeepPod(s, uid), f"keep of pod {uid}", [])
        self._since_hello.add(uid)

    async def delete(self, uid: str) -> None:
        await self._request(lambda s: zds.DeletePod(s, uid), f"delete of pod {uid}", [])
        self.served.discard(uid)
        self._since_hello.discard(uid)

    async def snapshot_complete(self) -> None:
        await self._request(zds.SnapshotComplete, "snapshot_complete", [])
        self.served &= self._since_hello
