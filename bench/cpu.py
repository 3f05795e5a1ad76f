"""CPU seconds per 1000 requests of the proxies: the mesh's ztunnels (both nodes) or the two
sidecars, from ``utime + stime`` in ``/proc/<pid>/stat`` read before and after a fixed load.

Two loads, both ``GET /bytes/1024`` (1 KiB responses) from ``client`` to ``server-1``:
``wrk -t1 -c50`` for ``seconds`` (closed loop: as fast as the column goes), and the open-loop
constant-rate run of :mod:`bench.constant_rate` (the same request rate in every column, so the
CPU is compared at equal work). Threads are included (``/proc/<pid>/stat`` sums them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from a ``/proc/<pid>/stat`` line (pure). The command name
    (field 2) may hold spaces and parentheses: fields are counted after the last ``)``."""
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def cpu_seconds(pids: Iterable[int]) -> float:
    return sum(parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) for pid in pids) / TICKS


def per_1000(cpu_s: float, requests: int) -> float:
    """CPU seconds per 1000 requests; ``nan`` for no requests or a failed measurement."""
    if requests <= 0 or math.isnan(cpu_s):
        return math.nan
    return cpu_s / requests * 1000


@dataclass(frozen=True)
class Cpu:
    wrk_s_per_1000: float
    fixed_rate_s_per_1000: float


def measure_cpu(pids: list[int], load: Callable[[], int]) -> float:
    """Run ``load`` (which returns how many requests it completed) and return the CPU seconds
    per 1000 requests the processes ``pids`` spent meanwhile."""
    before = cpu_seconds(pids)
    requests = load()
    return per_1000(cpu_seconds(pids) - before, requests)
