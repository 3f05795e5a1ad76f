from __future__ import annotations

import math

from bench.cpu import parse_cpu_ticks, per_1000
from bench.memory import Mem, PerConnection, merge_scans, parse_smaps_rollup, total

SMAPS = """55d0c4a1b000-7ffd0f5fe000 ---p 00000000 00:00 0                          [rollup]
Rss:               15476 kB
Pss:               10913 kB
Pss_Dirty:          9724 kB
Shared_Clean:       5044 kB
"""


def test_parse_smaps_rollup_reads_rss_and_pss_only() -> None:
    assert parse_smaps_rollup(SMAPS) == Mem(15476.0, 10913.0)


def test_parse_smaps_rollup_rejects_other_text() -> None:
    for text in ("", "Rss: 1 kB\n", "Rss: 1 MB\nPss: 1 kB\n"):
        try:
            parse_smaps_rollup(text)
        except ValueError:
            continue
        raise AssertionError(f"accepted {text!r}")


def test_mem_arithmetic() -> None:
    assert total([Mem(1, 2), Mem(3, 4)]) == Mem(4, 6)
    assert Mem(5, 5) - Mem(1, 2) == Mem(4, 3)
    assert Mem(2048, 1024).rss_mib == 2.0


def test_per_connection_divides_both_ends_growth() -> None:
    pc = PerConnection(10_000, Mem(10_000, 5_000), Mem(10_000, 5_000),
                       1_000, Mem(30_000, 20_000), Mem(10_000, 20_000))
    assert pc.per_conn_mesh() == Mem(2.0, 1.0)
    assert pc.per_conn_sidecar() == Mem(40.0, 40.0)
    assert math.isnan(PerConnection(0, Mem(1, 1), Mem(1, 1), 0, Mem(1, 1), Mem(1, 1))
                      .per_conn_mesh().rss_kib)


def test_merge_scans_marks_missing_steps_failed() -> None:
    rows = merge_scans([(1, Mem(1, 1), Mem(2, 2))], [(1, Mem(3, 3), Mem(4, 4)),
                                                     (10, Mem(5, 5), Mem(6, 6))], steps=(1, 10))
    assert [r.pods for r in rows] == [1, 10]
    assert rows[0].sidecars == Mem(3, 3) and rows[0].mesh_node2 == Mem(2, 2)
    assert math.isnan(rows[1].mesh_node1.pss_kib) and rows[1].sidecars == Mem(5, 5)


def test_parse_cpu_ticks_counts_fields_after_the_command_name() -> None:
    stat = ("1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 "
            "250 75 0 0 20 0 1 0 99 1000 10 18446744073709551615")
    assert parse_cpu_ticks(stat) == 325


def test_per_1000() -> None:
    assert per_1000(2.0, 4000) == 0.5
    assert math.isnan(per_1000(1.0, 0))
    assert math.isnan(per_1000(math.nan, 10))
