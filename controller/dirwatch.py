"""Change notification for one directory with Linux inotify, on the event loop (no thread).

:class:`DirWatch` wakes its waiter as soon as a file in the directory is closed after writing,
moved in or out, deleted or has its attributes changed (``meshctl apply`` writes a temporary
file and renames it into place: one ``IN_MOVED_TO``). Events are not interpreted: any event
means "rescan", so the reader never needs to trust an event's name, and a burst of events is one
wake-up. Half-written files are not announced (no ``IN_MODIFY``/``IN_CREATE``).

Invariants: the inotify fd is non-blocking, read on the loop with ``add_reader``, drained
completely on every wake-up (so the kernel queue cannot fill while nobody waits), and closed by
:meth:`close`. A queue overflow (``IN_Q_OVERFLOW``) is just another wake-up. When inotify is not
available (:func:`open_watch` raises :class:`WatchUnavailable`) the caller falls back to polling.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Final

IN_ATTRIB: Final = 0x004
IN_CLOSE_WRITE: Final = 0x008
IN_MOVED_FROM: Final = 0x040
IN_MOVED_TO: Final = 0x080
IN_DELETE: Final = 0x200
IN_DELETE_SELF: Final = 0x400
IN_MOVE_SELF: Final = 0x800
IN_ONLYDIR: Final = 0x01000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC
#: what means "the directory's contents may differ now"
WATCH_MASK: Final = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB
                     | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_READ_SIZE: Final = 64 * 1024


class WatchUnavailable(OSError):
    """inotify could not watch the directory (no libc symbol, limits, not a directory)."""


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        raise WatchUnavailable("libc not found: cannot use inotify")
    return ctypes.CDLL(name, use_errno=True)


class DirWatch:
    def __init__(self, fd: int, directory: Path) -> None:
        self._fd = fd
        self.directory = directory
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_readable)
        self.wakeups = 0

    def _on_readable(self) -> None:
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
        self.wakeups += 1
        self._changed.set()

    def wake(self) -> None:
        """Wake the waiter now (the owner is stopping)."""
        self._changed.set()

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - the poll fallback interval
        """Until the directory changed (True) or ``timeout`` passed (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1


def open_watch(directory: Path) -> DirWatch:
    """Watch ``directory``; raises :class:`WatchUnavailable` when inotify cannot."""
    libc = _libc()
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise WatchUnavailable(err, f"inotify_init1: {os.strerror(err)}")
    wd = libc.inotify_add_watch(fd, os.fsencode(directory), WATCH_MASK)
    if wd < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise WatchUnavailable(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
    return DirWatch(fd, directory)
