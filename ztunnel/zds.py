"""The ZDS server: the node agent tells the ztunnel which pods to serve (meshapi/zds.py).

``AF_UNIX``/``SOCK_SEQPACKET`` on ``--zds-socket``; one JSON message per packet; the pod's netns
fd arrives with ``add`` as ``SCM_RIGHTS``.

Invariants:

* One agent connection at a time: a new connection replaces (closes) the old one.
* On every connection the ztunnel first sends ``hello`` with the pods it serves.
* Messages of a connection are handled in order, each acknowledged; an invalid message gets an
  ack with an error (with ``seq`` 0 when even the seq could not be read), is counted in
  ``nodemesh_ztunnel_zds_errors_total`` and logged — the connection stays up.
* Every fd received is either handed to the pod manager (which owns it from then on) or closed.
* ``snapshot_complete`` drops every served pod that was neither added nor kept since ``hello``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Protocol

from meshapi import wire, zds
from meshapi.errors import WireError
from meshapi.model import Workload
from ztunnel.errors import PodError, ZtunnelError
from ztunnel.metrics import Metrics
from ztunnel.netns import CLONE_NEWNET

log = logging.getLogger("ztunnel.zds")

MAX_FDS_PER_MESSAGE = 4
#: what :func:`recv_packet` returns for a packet the kernel truncated (never valid JSON)
TRUNCATED = b"\x00truncated"


class PodSink(Protocol):
    """What the ZDS server drives (``pods.PodManager``; a fake in unit tests)."""

    def served(self) -> list[str]: ...
    async def add(
        self, workload: Workload, netns_fd: int, redirection: str = "iptables"
    ) -> None: ...
    def keep(self, uid: str) -> None: ...
    async def delete(self, uid: str) -> bool: ...
    async def retain_only(self, uids: set[str]) -> list[str]: ...


class ZdsSession:
    """The sans-socket part of one agent connection: a packet (and its fds) in, an ack out."""

    def __init__(self, pods: PodSink, metrics: Metrics, node: str | None = None) -> None:
        self._pods = pods
        self._metrics = metrics
        self._node = node
        self._seen: set[str] = set()

    def hello(self) -> bytes:
        return zds.encode(zds.Hello(tuple(self._pods.served())))

    def _error(self, reason: str, seq: int, message: str) -> bytes:
        self._metrics.zds_errors.labels(reason).inc()
        log.warning("ZDS message seq=%d rejected (%s): %s", seq, reason, message)
        return zds.encode(zds.Ack(seq, message))

    async def handle(self, data: bytes, fds: list[int]) -> bytes:
        """Handle one packet; always returns the ack to send; closes fds it does not hand on."""
        try:
            return await self._handle(data, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _handle(self, data: bytes, fds: list[int]) -> bytes:
        if data == TRUNCATED:
            return self._error(
                "malformed", 0,
                f"message truncated: a packet over {zds.MAX_MESSAGE_BYTES} bytes or with more "
                f"than {MAX_FDS_PER_MESSAGE} fds",
            )
        try:
            message = zds.decode(data)
        except WireError as exc:
            return self._error("malformed", _seq_of(data), f"malformed message: {exc}")
        if isinstance(message, (zds.Hello, zds.Ack)):
            return self._error("unexpected", 0, f"unexpected {message.type!r} from the agent")
        seq = message.seq
        if not isinstance(message, zds.AddPod) and fds:
            return self._error("unexpected_fd", seq, f"{message.type!r} must not carry an fd")
        match message:
            case zds.AddPod(workload=workload, redirection=redirection):
                if len(fds) != 1:
                    return self._error(
                        "missing_fd", seq,
                        f"add of pod {workload.uid} needs exactly one netns fd "
                        f"(SCM_RIGHTS), got {len(fds)}",
                    )
                if self._node is not None and workload.node != self._node:
                    return self._error(
                        "wrong_node", seq,
                        f"pod {workload.uid} is on node {workload.node!r}, "
                        f"this ztunnel serves {self._node!r}",
                    )
                if not _is_netns(fds[0]):
                    return self._error(
                        "bad_fd", seq, f"the fd sent with pod {workload.uid} is not a netns"
                    )
                fd = fds.pop()
                try:
                    await self._pods.add(workload, fd, redirection or "iptables")
                except ZtunnelError as exc:
                    return self._error("add_failed", seq, str(exc))
                self._seen.add(str(workload.uid))
            case zds.KeepPod(uid=uid):
                try:
                    self._pods.keep(uid)
                except PodError as exc:
                    return self._error("unknown_pod", seq, str(exc))
                self._seen.add(uid)
            case zds.DeletePod(uid=uid):
                await self._pods.delete(uid)  # idempotent: deleting an unknown pod is fine
                self._seen.discard(uid)
            case zds.SnapshotComplete():
                dropped = await self._pods.retain_only(set(self._seen))
                if dropped:
                    log.info("snapshot complete: dropped pods no longer wanted: %s", dropped)
        return zds.encode(zds.Ack(seq, None))


def _seq_of(data: bytes) -> int:
    """Best effort: the seq of a message that failed validation, so the agent can match it
    (0 when it is not one the agent could have sent: an ack must decode on the other end)."""
    try:
        raw = wire.loads(data)
    except WireError:
        return 0
    seq = raw.get("seq") if isinstance(raw, dict) else None
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= zds.MAX_SEQ:
        return seq
    return 0


NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: the namespace type (linux/nsfs.h)


def _is_netns(fd: int) -> bool:
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def recv_packet(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One packet and its fds from a non-blocking SEQPACKET socket; ``b""`` at EOF."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(
                sock, zds.MAX_MESSAGE_BYTES + 1, MAX_FDS_PER_MESSAGE
            )
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            return TRUNCATED, []
        return data, list(fds)


class ZdsServer:
    def __init__(
        self, path: Path, pods: PodSink, metrics: Metrics, node: str | None = None
    ) -> None:
        self._path = path
        self._pods = pods
        self._metrics = metrics
        self._node = node
        self.listening = asyncio.Event()
        self._current: asyncio.Task[None] | None = None
        self._current_sock: socket.socket | None = None

    async def run(self) -> None:
        """Listen until cancelled. Removes a stale socket file first."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.setblocking(False)
        try:
            listener.bind(str(self._path))
            os.chmod(self._path, 0o600)
            listener.listen(4)
            self.listening.set()
            log.info("ZDS server listening on %s", self._path)
            loop = asyncio.get_running_loop()
            async with asyncio.TaskGroup() as tg:
                while True:
                    conn, _ = await loop.sock_accept(listener)
                    conn.setblocking(False)
                    await self._replace(conn)
                    self._current = tg.create_task(self._serve(conn), name="zds-agent")
        finally:
            self.listening.clear()
            await self._replace(None)
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _replace(self, conn: socket.socket | None) -> None:
        old, self._current = self._current, None
        if old is not None and not old.done():
            if conn is not None:
                log.info("a new agent connection replaces the previous one")
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        session = ZdsSession(self._pods, self._metrics, self._node)
        try:
            await loop.sock_sendall(conn, session.hello())
            while True:
                data, fds = await recv_packet(conn)
                if not data and not fds:
                    log.info("agent disconnected")
                    return
                ack = await session.handle(data, fds)
                await loop.sock_sendall(conn, ack)
        except OSError as exc:
            log.warning("agent connection failed: %s", exc)
        finally:
            conn.close()
