"""Pid files that survive pid reuse: ``<pid> <start time>`` (field 22 of ``/proc/<pid>/stat``).

A pid file only names a process while that process has the recorded start time, so ``down``
never signals an unrelated process that happened to get a recycled pid.
"""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def write(path: str | os.PathLike[str], pid: int) -> None:
    started = start_time(pid)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid} {started if started is not None else 0}\n")
    os.replace(tmp, path)


def live_pid(path: Path) -> int | None:
    """The pid recorded in ``path`` if that very process is still running."""
    try:
        pid_s, _, start_s = path.read_text().strip().partition(" ")
        pid, recorded = int(pid_s), int(start_s or 0)
    except (OSError, ValueError):
        return None
    started = start_time(pid)
    if started is None or (recorded and started != recorded):
        return None
    return pid
