"""The BPF syscalls the agent needs besides loading (maps, pins, links), through libbpf with
ctypes. No ``bcc`` here: a restarted agent and the tests can read and edit pinned state with
this module alone.

Invariants: every call returns a value or raises :class:`BpfError` naming the operation and the
errno; file descriptors returned are owned by the caller (close them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

from node_agent.errors import RedirectError

BPF_FS: Final = Path("/sys/fs/bpf")
#: SOL_SOCKET option giving the cookie of the socket's network namespace (Linux >= 5.14)
SO_NETNS_COOKIE: Final = 71

# enum bpf_prog_type / bpf_attach_type values (include/uapi/linux/bpf.h)
PROG_SOCK_OPS: Final = 13
PROG_CGROUP_SOCK_ADDR: Final = 18
PROG_CGROUP_SOCKOPT: Final = 25
PROG_SK_MSG: Final = 16
PROG_SK_LOOKUP: Final = 30
ATTACH_CGROUP_SOCK_OPS: Final = 3
ATTACH_SK_MSG_VERDICT: Final = 7
ATTACH_CGROUP_INET4_CONNECT: Final = 10
ATTACH_CGROUP_INET6_CONNECT: Final = 11
ATTACH_CGROUP_GETSOCKOPT: Final = 21
ATTACH_SK_LOOKUP: Final = 36
MAP_ARRAY: Final = 2
BPF_ANY: Final = 0


class BpfError(RedirectError):
    """A BPF syscall failed."""

    def __init__(self, what: str, err: int) -> None:
        super().__init__(f"{what}: {os.strerror(err)} (errno {err})")
        self.errno = err


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise RedirectError(f"libbpf is not installed ({name}): {exc}") from exc
    vp, c, u32, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int
    for fn, args in {
        "bpf_obj_get": [c],
        "bpf_obj_pin": [i, c],
        "bpf_map_update_elem": [i, vp, vp, ctypes.c_uint64],
        "bpf_map_lookup_elem": [i, vp, vp],
        "bpf_map_delete_elem": [i, vp],
        "bpf_map_get_next_key": [i, vp, vp],
        "bpf_link_create": [i, i, i, vp],
        "bpf_link_update": [i, i, vp],
        "bpf_map_create": [i, c, u32, u32, u32, vp],
        "libbpf_probe_bpf_prog_type": [i, vp],
    }.items():
        f = getattr(lib, fn)
        f.argtypes = args
        f.restype = i
    return lib


def _check(what: str, rc: int) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise BpfError(what, err)
    return rc


def obj_get(path: Path) -> int:
    return _check(f"opening pinned {path}", _lib().bpf_obj_get(str(path).encode()))


def obj_pin(fd: int, path: Path) -> None:
    _check(f"pinning {path}", _lib().bpf_obj_pin(fd, str(path).encode()))


def link_create(prog_fd: int, target_fd: int, attach_type: int, what: str) -> int:
    rc = _lib().bpf_link_create(prog_fd, target_fd, attach_type, None)
    return _check(f"attaching {what}", rc)


def link_update(link_fd: int, prog_fd: int, what: str) -> None:
    _check(f"updating {what}", _lib().bpf_link_update(link_fd, prog_fd, None))


def map_update(fd: int, key: bytes, value: bytes, what: str) -> None:
    _check(f"updating {what}", _lib().bpf_map_update_elem(fd, key, value, BPF_ANY))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    buf = ctypes.create_string_buffer(value_size)
    if _lib().bpf_map_lookup_elem(fd, key, buf) < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        raise BpfError("map lookup", err)
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    """True if the key was there."""
    if _lib().bpf_map_delete_elem(fd, key) < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise BpfError("map delete", err)
    return True


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a map (a snapshot: keys are collected before any is yielded)."""
    keys: list[bytes] = []
    prev: bytes | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while _lib().bpf_map_get_next_key(fd, prev, nxt) == 0:
        keys.append(nxt.raw)
        prev = nxt.raw
        if len(keys) > 1_000_000:
            break
    return iter(keys)


def prog_type_supported(prog_type: int) -> bool:
    return bool(_lib().libbpf_probe_bpf_prog_type(prog_type, None) == 1)


def bpf_syscall_works() -> str | None:
    """None if the bpf() syscall can create a map, else why not."""
    fd = _lib().bpf_map_create(MAP_ARRAY, b"nm_probe", 4, 4, 1, None)
    if fd < 0:
        err = ctypes.get_errno() or -fd
        return f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}"
    os.close(fd)
    return None


def netns_cookie_current() -> int:
    """The cookie of the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, "little")


def bpffs_mounted(mounts: str = "/proc/mounts") -> bool:
    for line in Path(mounts).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == str(BPF_FS) and fields[2] == "bpf":
            return True
    return False


def mount_bpffs() -> None:
    """Mount the BPF file system on /sys/fs/bpf unless it is there already."""
    if bpffs_mounted():
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"bpf", str(BPF_FS).encode(), b"bpf", 0, None) != 0:
        raise BpfError(f"mounting the BPF file system on {BPF_FS}", ctypes.get_errno())


def cgroup2_mount(mounts: str = "/proc/mounts") -> Path:
    for line in Path(mounts).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise RedirectError("no cgroup2 file system is mounted (see /proc/mounts)")
