from __future__ import annotations

import math
from pathlib import Path

from bench.control import Enrollment, Propagation
from bench.cpu import Cpu
from bench.memory import Mem, PerConnection, ScanPoint
from bench.plots import memory_series, write_plots
from bench.render import DIRECT, SIDECARS, FixedRate, Results, render
from bench.throughput import Figures

NAN = math.nan


def results() -> Results:
    r = Results(started="2026-12-07 12:00 UTC", minutes=20.0, commit="abc1234", cores=2,
                kernel="6.18", seconds=5, repeat=3, rate=1000, rate_connections=10)
    r.figures = {
        DIRECT: Figures(10.0, 100, 1000, 5000, 1000, 3000, 20000, 3000),
        SIDECARS: Figures(3.0, 200, 2000, 2500, 2000, 6000, 10000, 300),
        "iptables": Figures(NAN, 300, 3000, 2000, 3000, 9000, 8000, 400),
    }
    r.cpu = {SIDECARS: Cpu(0.05, 0.3), "iptables": Cpu(0.1, NAN)}
    r.fixed = {DIRECT: FixedRate(200, 1000, 2000), SIDECARS: FixedRate(300, 900, 2000),
               "iptables": FixedRate(400, 1500, 3000)}
    r.memory = [ScanPoint(1, Mem(1024, 512), Mem(1024, 512), Mem(2048, 1024), Mem(1, 1)),
                ScanPoint(10, Mem.failed(), Mem.failed(), Mem(4096, 2048), Mem(1, 1))]
    r.per_conn = PerConnection(10000, Mem(10000, 10000), Mem(10000, 10000), 9900,
                               Mem(99000, 99000), Mem(99000, 99000))
    r.enroll = {"iptables": Enrollment([0.005, 0.007], [0.25, 0.26])}
    r.propagation = Propagation([0.3, 0.4], [0.01, 0.02], [0.25, 0.3])
    r.memory_mode = "ebpf"
    return r


def test_render_shows_failures_and_ratios_never_invented_values() -> None:
    text = render(results())
    row = next(ln for ln in text.splitlines() if ln.startswith("| single-stream"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # direct, sidecars, mesh; sidecars/direct, iptables/direct; iptables/sidecars
    assert cells[1:] == ["10.00 Gbit/s", "3.00 Gbit/s", "failed", "0.30", "n/a", "n/a"]
    rps = next(ln for ln in text.splitlines() if ln.startswith("| requests/s, 50"))
    assert rps.rstrip().endswith("| 0.50 | 0.40 | 0.80 |")
    assert "| 1000 req/s, 10 connections, open loop | 0.300 | failed | n/a |" in text
    fixed = next(ln for ln in text.splitlines() if ln.startswith("| mesh (iptables) | 400"))
    # added p50 +200 against the sidecars' +100; p99: the sidecars added nothing -> n/a
    assert "| +200 µs | +500 µs | 2.00 | n/a |" in fixed
    assert "| 10 | failed | failed | 4.0 MiB | 2.0 MiB | n/a |" in text
    assert "| 1 | 1.0 MiB | 0.5 MiB | 2.0 MiB | 1.0 MiB | 0.50 |" in text
    assert "| 2.0 KiB | 2.0 KiB |" in text and "| 20.0 KiB | 20.0 KiB |" in text
    assert "--workers" in text and "ebpf+sockmap" in text


def test_plots_are_written_from_measured_points_only(tmp_path: Path) -> None:
    r = results()
    series = memory_series(r)
    assert series["mesh node-1 (agent + ztunnel), PSS"] == [(1, 0.5)]
    assert series["sidecars (sum), PSS"] == [(1, 1.0), (10, 2.0)]
    written = write_plots(r, tmp_path)
    assert [name for _, name in written] == ["throughput-latency.png", "memory-vs-pods.png"]
    for _, name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
