"""Starting and stopping the cluster's processes.

Every process is started detached through ``meshctl.local.podexec --detach`` (new session,
output to a log file, pid file written, optionally inside a pod's netns and a cgroup) and is
never a child of meshctl. Stopping finds processes three ways, because a crashed ``up`` may
have lost any one of them: pid files, membership of our cgroups, and network namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshctl.errors import ClusterError
from meshctl.local import pidfile


@dataclass(frozen=True, slots=True)
class Launch:
    """One process to start: ``argv`` with its log, pid file, cgroup and (optional) netns."""

    name: str
    argv: tuple[str, ...]
    log: Path
    pid_file: Path
    cgroup: Path
    netns: str | None = None


def start(launches: Iterable[Launch]) -> None:
    """Start all of them concurrently; returns once each has joined its cgroup and netns."""
    pending: list[tuple[Launch, subprocess.Popen[bytes]]] = []
    for launch in launches:
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        launch.pid_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "meshctl.local.podexec", "--detach",
                "--log", str(launch.log), "--pid-file", str(launch.pid_file),
                "--cgroup", str(launch.cgroup)]
        if launch.netns is not None:
            argv += ["--netns", launch.netns]
        argv += ["--", *launch.argv]
        _argv_file(launch.pid_file).write_text(json.dumps(list(launch.argv)) + "\n")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            raise ClusterError(f"cannot start {launch.name}: {exc}") from exc
        pending.append((launch, proc))
    failures: list[str] = []
    for launch, proc in pending:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failures.append(f"{launch.name}: launcher hung; see {launch.log}")
            continue
        if proc.returncode != 0:
            failures.append(f"{launch.name}: {err.decode(errors='replace').strip()}")
    if failures:
        raise ClusterError("could not start: " + "; ".join(failures))


def _argv_file(pid_file: Path) -> Path:
    return pid_file.with_name(pid_file.name + ".argv.json")


def recorded_argv(pid_file: Path) -> tuple[str, ...] | None:
    """The command last started with this pid file (written by :func:`start`)."""
    try:
        value = json.loads(_argv_file(pid_file).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        return None
    return tuple(value)


def alive(pid: int) -> bool:
    return pidfile.start_time(pid) is not None


def pids_in_netns(netns_paths: Iterable[str]) -> set[int]:
    """Processes whose network namespace is one of ``netns_paths`` (compared by dev+inode)."""
    wanted: set[tuple[int, int]] = set()
    for path in netns_paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    if not wanted:
        return set()
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            found.add(int(entry))
    return found


def terminate(pids: set[int], grace: float = 3.0) -> set[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the pids still alive after that."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = {p for p in pids if alive(p)}
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = {p for p in remaining if alive(p)}
    for pid in remaining:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = {p for p in remaining if alive(p)}
    return remaining


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise ClusterError(f"cannot signal pid {pid}: {exc}; run as root") from exc
