"""Joining a pod: its cgroup (write our pid to ``cgroup.procs``) and its network namespace
(``setns(2)`` through ctypes; Python 3.11 has no ``os.setns``).

Call these only in a single-threaded process that is about to ``exec`` (see ``podexec``):
``setns`` moves just the calling thread (STYLE 8), so it must never run in meshctl's own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

from meshctl.errors import ClusterError

CLONE_NEWNET: Final = 0x40000000


def join_cgroup(cgroup_dir: str) -> None:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as exc:
        raise ClusterError(
            f"cannot join cgroup {cgroup_dir}: {exc}; is the cluster up (`meshctl local pods`)?"
        ) from exc


def join_netns(netns_path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    try:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ClusterError(
            f"cannot open network namespace {netns_path}: {exc}; "
            "is the cluster up (`ip netns list`)?"
        ) from exc
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise ClusterError(f"setns({netns_path}) failed: {os.strerror(err)}; are you root?")
    finally:
        os.close(fd)
