"""Compile and load the programs of ``bpf/`` with BCC: the only module that imports ``bcc``.

Invariants: the programs are compiled as one unit, so they share the pinned maps of
``bpf/lib/maps.h`` (created and pinned under ``<pin dir>/maps`` by the first load, reopened by every
later one). ``sockmap`` compiles sock_ops with ``NM_SOCKMAP`` (it fills ``nm_hops``); sk_msg is
loaded either way, attaching it is the caller's choice. A compile or verifier failure raises
:class:`LoadError` carrying the compiler's or verifier's own message; nothing is attached here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node_agent.errors import RedirectError
from node_agent.redirect.ebpf import sys as bpfsys

#: attach point file → (function, program type, expected attach type)
PROGRAMS: Final = {
    "connect4.c": ("nm_connect4", bpfsys.PROG_CGROUP_SOCK_ADDR, bpfsys.ATTACH_CGROUP_INET4_CONNECT),
    "connect6.c": ("nm_connect6", bpfsys.PROG_CGROUP_SOCK_ADDR, bpfsys.ATTACH_CGROUP_INET6_CONNECT),
    "sockops.c": ("nm_sockops", bpfsys.PROG_SOCK_OPS, bpfsys.ATTACH_CGROUP_SOCK_OPS),
    "getsockopt.c": ("nm_getsockopt", bpfsys.PROG_CGROUP_SOCKOPT, bpfsys.ATTACH_CGROUP_GETSOCKOPT),
    "sk_lookup.c": ("nm_sk_lookup", bpfsys.PROG_SK_LOOKUP, bpfsys.ATTACH_SK_LOOKUP),
    "sk_msg.c": ("nm_sk_msg", bpfsys.PROG_SK_MSG, bpfsys.ATTACH_SK_MSG_VERDICT),
}
_INCLUDE = '#include "lib/helpers.h"'


class LoadError(RedirectError):
    """The programs did not compile or did not pass the verifier."""


def default_source_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "bpf"


def source_text(source_dir: Path) -> str:
    """The programs as one compilation unit (BCC rewrites map calls only in the main text)."""
    parts = [_INCLUDE]
    for name in PROGRAMS:
        try:
            text = (source_dir / name).read_text()
        except OSError as exc:
            raise LoadError(f"cannot read BPF program {source_dir / name}: {exc}") from exc
        parts.append(f"/* ---- {name} ---- */\n" + text.replace(_INCLUDE, ""))
    return "\n".join(parts)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """BCC writes compiler and verifier messages to fd 2: collect them for the error."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


@dataclass
class Loaded:
    """The loaded programs (fds owned by the BCC object kept here) and their source digest."""

    bpf: Any
    prog_fds: dict[str, int]
    digest: str


def _tail(text: str, lines: int = 12) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def load(source_dir: Path, map_pin_dir: Path, *, sockmap: bool = False) -> Loaded:
    """Compile and verify every program; maps are created or reopened under ``map_pin_dir``."""
    try:
        from bcc import BPF
    except ImportError as exc:
        raise LoadError(f"the bcc Python module is not importable: {exc}") from exc
    text = source_text(source_dir)
    cflags = [f'-DNM_PIN_DIR="{map_pin_dir}"', f"-I{source_dir}"]
    if sockmap:
        cflags.append("-DNM_SOCKMAP")
    with _stderr_captured() as msgs:
        try:
            bpf = BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:  # BCC raises bare Exception for compile errors
            failure: Exception | None = exc
        else:
            failure = None
    if failure is not None:
        raise LoadError(f"compiling bpf/ failed: {_tail(msgs[0]) or failure}") from failure
    fds: dict[str, int] = {}
    for fname, (func, prog_type, attach_type) in PROGRAMS.items():
        with _stderr_captured() as msgs:
            try:
                fn = bpf.load_func(func.encode(), prog_type, attach_type=attach_type)
            except Exception as exc:  # BCC raises bare Exception when the verifier says no
                failure = exc
            else:
                failure = None
                fds[func] = int(fn.fd)
        if failure is not None:
            bpf.cleanup()
            raise LoadError(
                f"loading bpf/{fname} failed: {failure}; verifier: {_tail(msgs[0])}"
            ) from failure
    return Loaded(bpf, fds, digest(text + " ".join(cflags)))
