"""Work inside a pod's network namespace from worker threads (STYLE.md 8).

A network namespace belongs to a thread. :class:`NetnsExecutor` runs a function in a worker
thread that enters the namespace with ``setns(2)``, runs the function, and always returns to the
thread's original namespace before the thread picks up other work.

Invariants:

* ``setns`` is never called on the event-loop thread (nor on the main thread): the executor
  refuses to run there.
* A worker thread that cannot return to its original namespace is never reused: the executor is
  marked broken, every later call fails with :class:`NetnsError`, and the process should exit
  (the app treats it as fatal) rather than open sockets in the wrong pod.
* Sockets created in a namespace keep it: they are created in the worker thread and handed back
  to the loop, which connects/accepts on them (``loop.sock_connect``, ``loop.create_server``).
* Outgoing marked sockets come from a per-namespace reserve made in batches by one worker call,
  so a new connection costs no thread hop; the reserve of a namespace is closed with
  :meth:`NetnsExecutor.forget` when its pod goes away, and never exceeds
  :data:`RESERVE_BATCH` sockets per namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from meshapi.constants import ZTUNNEL_SOCKET_MARK
from ztunnel.errors import NetnsError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
LISTEN_BACKLOG = 1024
#: marked sockets made per worker call for a namespace's reserve; refill below RESERVE_LOW
RESERVE_BATCH = 32
RESERVE_LOW = 8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(
            f"setns(fd={fd}, CLONE_NEWNET) failed: {os.strerror(err)} "
            "(is the fd a network namespace, and does the ztunnel run with CAP_SYS_ADMIN?)"
        )


def _current_netns_fd() -> int:
    return os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)


def netns_inode(fd: int) -> int:
    """The namespace's identity (inode of its nsfs file), for logs and comparisons."""
    return os.fstat(fd).st_ino


class NetnsExecutor:
    """A small thread pool whose threads enter a namespace per call and always leave it."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="netns")
        self._broken: str | None = None
        # netns fd -> unconnected marked sockets made in that namespace, ready to connect
        self._reserve: dict[int, list[socket.socket]] = {}
        self._refilling: dict[int, asyncio.Future[list[socket.socket]]] = {}

    async def marked_socket(self, netns_fd: int) -> socket.socket:
        """An unconnected marked socket in ``netns_fd``: from the reserve when it has one (no
        thread hop), else made now; the reserve is refilled in the background."""
        reserve = self._reserve.setdefault(netns_fd, [])
        if len(reserve) < RESERVE_LOW and netns_fd not in self._refilling:
            self._refill(netns_fd)
        if reserve:
            return reserve.pop()
        refill = self._refilling.get(netns_fd)
        if refill is not None:
            await asyncio.wait([refill])  # its callback moves the batch into the reserve
            await asyncio.sleep(0)
        again = self._reserve.get(netns_fd)
        if again:
            return again.pop()
        return await self.run(netns_fd, marked_socket)  # forgotten meanwhile, or empty batch

    def _refill(self, netns_fd: int) -> None:
        if self._broken is not None:
            return
        # a plain executor future (not a task): it cannot be left running by a cancelled caller
        fut: asyncio.Future[list[socket.socket]] = asyncio.get_running_loop().run_in_executor(
            self._pool, self._enter_and_run, netns_fd, lambda: marked_sockets(RESERVE_BATCH)
        )
        self._refilling[netns_fd] = fut

        def done(f: asyncio.Future[list[socket.socket]]) -> None:
            if self._refilling.get(netns_fd) is f:
                del self._refilling[netns_fd]
            socks = _result(f)
            reserve = self._reserve.get(netns_fd)
            room = 0 if reserve is None else max(0, RESERVE_BATCH - len(reserve))
            if reserve is not None:
                reserve.extend(socks[:room])
            for sock in socks[room:]:  # the pod went away meanwhile, or the reserve is full
                sock.close()

        fut.add_done_callback(done)

    def forget(self, netns_fd: int) -> None:
        """The namespace's pod is gone: close its reserve (before its fd is closed). A refill
        still running closes what it makes (its callback finds no reserve)."""
        for sock in self._reserve.pop(netns_fd, []):
            sock.close()

    async def run(self, netns_fd: int, fn: Callable[[], T]) -> T:
        if self._broken is not None:
            raise NetnsError(f"netns worker pool is unusable: {self._broken}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._enter_and_run, netns_fd, fn)

    def _enter_and_run(self, netns_fd: int, fn: Callable[[], T]) -> T:
        if threading.current_thread() is threading.main_thread():
            raise NetnsError("refusing to setns on the main thread")
        original = _current_netns_fd()
        try:
            setns(netns_fd)
            try:
                return fn()
            finally:
                try:
                    setns(original)
                except NetnsError as exc:
                    self._broken = f"a worker thread could not return to its namespace: {exc}"
                    raise
        finally:
            os.close(original)

    @property
    def broken(self) -> str | None:
        return self._broken

    def close(self) -> None:
        for fd in list(self._reserve):
            self.forget(fd)
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- socket helpers: called inside the namespace (by NetnsExecutor.run) ------------------------


def listening_socket(port: int, host: str = "0.0.0.0") -> socket.socket:
    """A bound, listening, non-blocking TCP socket in the calling thread's namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # several ztunnel worker processes may serve the same pod (DESIGN.md "Performance")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, ZTUNNEL_SOCKET_MARK)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = _port_in_use_hint(port) if exc.errno == errno.EADDRINUSE else ""
        raise NetnsError(f"cannot listen on {host}:{port} in the pod netns: {exc}{hint}") from exc
    return sock


def _port_in_use_hint(port: int) -> str:
    """Why a mesh port may be taken in a pod: an app's connection from it, because the pod's
    ephemeral range includes it (the default, 32768-60999, does not)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            reserved = f.read().strip()
    except (OSError, ValueError):
        return ""
    if not low <= port <= high or _reserved(port, reserved):
        return ""
    return (
        f" (the pod's ephemeral port range {low}-{high} includes {port}, so one of its own "
        "connections, maybe already closed and in TIME_WAIT, may hold it: keep the mesh's "
        "ports out of it, e.g. sysctl net.ipv4.ip_local_reserved_ports=15000-15100)"
    )


def _reserved(port: int, spec: str) -> bool:
    for part in filter(None, spec.split(",")):
        low, _, high = part.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def listening_sockets(ports: Sequence[int]) -> list[socket.socket]:
    """All of ``ports`` or none (a failure closes the ones already bound)."""
    out: list[socket.socket] = []
    try:
        for port in ports:
            out.append(listening_socket(port))
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


def marked_socket() -> socket.socket:
    """A non-blocking TCP socket with ``SO_MARK`` 0x539, so redirection lets it through."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, ZTUNNEL_SOCKET_MARK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetnsError(f"cannot create a marked socket (needs CAP_NET_ADMIN): {exc}") from exc
    return sock


def _result(f: asyncio.Future[list[socket.socket]]) -> list[socket.socket]:
    if f.cancelled() or f.exception() is not None:
        return []
    return f.result()


def marked_sockets(count: int) -> list[socket.socket]:
    """``count`` marked sockets (all or none) in the calling thread's namespace."""
    out: list[socket.socket] = []
    try:
        for _ in range(count):
            out.append(marked_socket())
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


async def connect_marked(
    executor: NetnsExecutor, netns_fd: int, addr: tuple[str, int], connect_timeout: float
) -> socket.socket:
    """A TCP socket created in ``netns_fd`` with the mark and connected (on the loop) to addr.

    ``addr`` is a numeric IPv4 address: the connect is a non-blocking ``connect(2)`` and a wait
    for writability on the loop, with no name resolution (``loop.sock_connect`` resolves even
    numeric addresses in a worker thread: one thread hop per connection).

    Raises ``OSError`` (e.g. ``ConnectionRefusedError``) or ``TimeoutError`` from the connect.
    """
    sock = await executor.marked_socket(netns_fd)
    try:
        async with asyncio.timeout(connect_timeout):
            await _connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(sock: socket.socket, addr: tuple[str, int]) -> None:
    err = sock.connect_ex(addr)
    if err == 0:
        return
    if err != errno.EINPROGRESS:
        raise OSError(err, f"connect to {addr[0]}:{addr[1]}: {os.strerror(err)}")
    loop = asyncio.get_running_loop()
    writable: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not writable.done():
            writable.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect to {addr[0]}:{addr[1]}: {os.strerror(err)}")


def set_rst_on_close(sock: object) -> None:
    """``SO_LINGER`` {on, 0}: closing the socket sends RST instead of FIN."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return
    with contextlib.suppress(OSError):
        setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def is_unreachable(exc: OSError) -> bool:
    return exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)
