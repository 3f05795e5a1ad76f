"""Listening Unix sockets of the node agent (the CNI plugin's, the metrics endpoint's).

Invariants:

* The socket file is created mode 0600: bound under a temporary name in the same directory,
  chmod-ed, then renamed into place, so nobody can connect before the mode is set.
* A stale socket file (nobody accepts on it: a killed agent left it) is replaced; a live one
  (another process answers on it) or a file that is not a socket is an error, and is left alone.
* :func:`unlink_if_ours` removes the file only while it is still the one we bound (a newer
  agent may have replaced it meanwhile).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
from typing import Self

from node_agent.errors import AgentError

log = logging.getLogger(__name__)

#: (st_dev, st_ino) of a socket file we bound
Bound = tuple[int, int]


def bind(
    path: str,
    flag: str,
    error: type[AgentError] = AgentError,
    backlog: int = 128,
    tmp_prefix: str = "nm",
) -> tuple[socket.socket, Bound]:
    """A non-blocking listening socket at ``path`` (mode 0600) and the identity of its file.
    ``flag`` names the option that chose the path (for messages); failures raise ``error``."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise error(
            f"cannot create {directory} for {flag} {path}: {exc}; is the directory a "
            "hostPath mount the DaemonSet can write?"
        ) from exc
    remove_stale(path, flag, error)
    tmp = os.path.join(directory, f".{tmp_prefix}-{secrets.token_hex(6)}.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
        os.rename(tmp, path)
        st = os.stat(path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise error(f"cannot serve {flag} {path}: {exc}") from exc
    return sock, (st.st_dev, st.st_ino)


def remove_stale(path: str, flag: str, error: type[AgentError] = AgentError) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise error(f"{path} exists and is not a socket; remove it or choose another {flag}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody listens
    except BlockingIOError:
        raise error(
            f"another process serves {path} (its backlog is full); is a second node agent "
            "running on this node?"
        ) from None
    else:
        raise error(f"another process serves {path}; is a second node agent running on this node?")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("replaced the stale socket file %s", path)


def unlink_if_ours(path: str, bound: Bound | None) -> None:
    """Remove ``path`` if it is still the socket file identified by ``bound``."""
    if bound is None:
        return
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == bound:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the socket %s: %s", path, exc)


class Served(abc.ABC):
    """The lifecycle shared by the agent's socket servers: ``start()`` and ``close()`` are
    theirs; ``serve(stop)`` and ``async with`` are built on them here."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or the task is cancelled), then close."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
