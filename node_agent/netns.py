"""Run a function inside a network namespace (STYLE.md 8).

Invariants: ``setns`` is only ever called on a thread created here for that one call, never on
the event loop's thread nor on a pooled worker. The thread switches back to its original netns
before it ends; if even that fails, the thread ends anyway, so no other work can run in the wrong
namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from node_agent.errors import NetnsError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
#: entering a netns and doing a few iptables calls takes milliseconds; this is a safety net
DEFAULT_TIMEOUT_SECONDS = 30.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(
    netns_path: str, fn: Callable[[], T], timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> T:
    """Call ``fn`` in a new thread that has entered the netns at ``netns_path``; blocking.

    Call it from the event loop with ``asyncio.to_thread``.
    """
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(
            f"cannot open netns {netns_path}: {exc.strerror} — does the pod still exist?"
        ) from exc
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            error.append(NetnsError(f"cannot open this thread's netns: {exc}"))
            return
        try:
            try:
                _setns(target)
            except OSError as exc:
                error.append(
                    NetnsError(f"cannot enter netns {netns_path}: {exc} — is the agent root?")
                )
                return
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)
            finally:
                # the thread ends right after this, so a failure cannot leak to other work
                try:
                    _setns(own)
                except OSError as exc:
                    error.append(NetnsError(f"cannot return from netns {netns_path}: {exc}"))
        finally:
            os.close(own)

    try:
        thread = threading.Thread(target=body, name=f"netns:{netns_path}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise NetnsError(f"work in netns {netns_path} did not finish within {timeout}s")
    finally:
        os.close(target)
    if error:
        raise error[0]
    return result[0]
