"""Compile and load the programs of ``bpf/`` with BCC: the only module that imports ``bcc``.

Invariants: the programs are compiled as one unit, so they share the pinned maps of
``bpf/lib/maps.h`` (created and pinned under ``<pin dir>/maps`` by the first load, reopened by every
later one). ``sockmap`` compiles sock_ops with ``NM_SOCKMAP`` (it fills ``nm_hops``); sk_msg is
loaded either way, attaching it is the caller's choice. A compile or verifier failure raises
:class:`LoadError` carrying the compiler's or verifier's own message; nothing is attached here.

The long-running agent never imports BCC: :func:`load_in_child` runs this module as a short-lived
child process (``python -m node_agent.redirect.ebpf.loader``) that compiles, loads, pins every
program under a fresh directory and exits, taking LLVM's hundreds of MB with it; the agent then
opens the pinned programs with plain ``bpf()`` calls and removes those pins (its own fds, and the
links it attaches, keep the programs alive).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
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


#: how long the compiling child may take (BCC compiles the whole unit with clang: seconds)
CHILD_TIMEOUT: Final = 180.0
_CHILD_FAILED: Final = 3


@dataclass
class Pinned:
    """Programs loaded by the child, reopened from their pins: fds owned by the caller."""

    prog_fds: dict[str, int]
    digest: str

    def close(self) -> None:
        for fd in self.prog_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.prog_fds.clear()


def load_in_child(
    source_dir: Path, map_pin_dir: Path, prog_pin_dir: Path, *, sockmap: bool = False,
    timeout: float = CHILD_TIMEOUT,
) -> Pinned:
    """Compile and load in a child process; reopen its program pins and remove them."""
    shutil.rmtree(prog_pin_dir, ignore_errors=True)
    argv = [sys.executable, "-m", "node_agent.redirect.ebpf.loader", "--source-dir",
            str(source_dir), "--map-pin-dir", str(map_pin_dir), "--prog-pin-dir",
            str(prog_pin_dir)]
    if sockmap:
        argv.append("--sockmap")
    try:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"compiling bpf/ took longer than {timeout:.0f} s (the BCC child "
                            "was killed); is the machine overloaded?") from exc
        except OSError as exc:
            raise LoadError(f"cannot start the BCC compiler child {sys.executable}: {exc}") \
                from exc
        if proc.returncode != 0:
            message = proc.stderr.strip().splitlines()
            detail = message[-1] if proc.returncode == _CHILD_FAILED and message else \
                _tail(proc.stderr) or f"exit status {proc.returncode}"
            raise LoadError(detail.removeprefix("LoadError: "))
        try:
            answer = json.loads(proc.stdout.strip().splitlines()[-1])
            digest_text = str(answer["digest"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LoadError(f"the BCC compiler child answered {proc.stdout[-200:]!r}") from exc
        fds: dict[str, int] = {}
        try:
            for func, _, _ in PROGRAMS.values():
                fds[func] = bpfsys.obj_get(prog_pin_dir / func)
        except RedirectError:
            Pinned(fds, digest_text).close()
            raise
        return Pinned(fds, digest_text)
    finally:
        shutil.rmtree(prog_pin_dir, ignore_errors=True)


def _child(argv: Sequence[str] | None = None) -> int:
    """The compiling child: load, pin each program under ``--prog-pin-dir``, print the digest."""
    p = argparse.ArgumentParser(prog="python -m node_agent.redirect.ebpf.loader")
    p.add_argument("--source-dir", type=Path, required=True)
    p.add_argument("--map-pin-dir", type=Path, required=True)
    p.add_argument("--prog-pin-dir", type=Path, required=True)
    p.add_argument("--sockmap", action="store_true")
    args = p.parse_args(argv)
    try:
        loaded = load(args.source_dir, args.map_pin_dir, sockmap=args.sockmap)
        args.prog_pin_dir.mkdir(parents=True, exist_ok=False)
        for func, fd in loaded.prog_fds.items():
            bpfsys.obj_pin(fd, args.prog_pin_dir / func)
    except (RedirectError, OSError) as exc:
        # the last line of stderr is the message the agent shows
        print(f"{type(exc).__name__}: {exc}".replace("\n", " | "), file=sys.stderr)
        return _CHILD_FAILED
    print(json.dumps({"digest": loaded.digest, "programs": sorted(loaded.prog_fds)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
