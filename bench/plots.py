"""PNG plots of a run, written next to RESULTS.md (matplotlib, Agg backend: no display).

Only measured points are drawn; a failed figure (``nan``) is left out of a line and drawn as
an empty bar, never interpolated.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.render import DIRECT, SIDECARS, Results, label

MEMORY_PNG = "memory-vs-pods.png"
THROUGHPUT_PNG = "throughput-latency.png"


def memory_series(r: Results) -> dict[str, list[tuple[int, float]]]:
    """Line name -> (pods, MiB) points, failed points dropped (pure)."""
    series: dict[str, list[tuple[int, float]]] = {
        "mesh node-1 (agent + ztunnel), PSS": [], "mesh node-1 (agent + ztunnel), RSS": [],
        "sidecars (sum), PSS": [], "sidecars (sum), RSS": [],
    }
    for p in r.memory:
        for name, v in (("mesh node-1 (agent + ztunnel), PSS", p.mesh_node1.pss_mib),
                        ("mesh node-1 (agent + ztunnel), RSS", p.mesh_node1.rss_mib),
                        ("sidecars (sum), PSS", p.sidecars.pss_mib),
                        ("sidecars (sum), RSS", p.sidecars.rss_mib)):
            if not math.isnan(v):
                series[name].append((p.pods, v))
    return series


def plot_memory(r: Results, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in memory_series(r).items():
        if points:
            style = "-o" if "mesh" in name else "-s"
            ax.plot([x for x, _ in points], [y for _, y in points], style, label=name,
                    alpha=1.0 if "PSS" in name else 0.45)
    ax.set_xlabel("pods on the node (10 idle connections each)")
    ax.set_ylabel("MiB")
    ax.set_title(f"Memory: mesh ({r.memory_mode}) vs one HAProxy sidecar per pod")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_throughput(r: Results, out: Path) -> None:
    cols = [c for c in (DIRECT, SIDECARS, *r.modes) if c in r.figures]
    panels = [
        ("single-stream throughput (Gbit/s)", [r.figures[c].throughput_gbps for c in cols]),
        ("requests/s, 50 connections", [r.figures[c].rps_50 for c in cols]),
        ("new connections/s", [r.figures[c].new_conns_per_s for c in cols]),
    ]
    fixed_cols = [c for c in cols if c in r.fixed]
    fig, axes = plt.subplots(1, 4, figsize=(15, 4))
    for ax, (title, values) in zip(axes[:3], panels, strict=True):
        ax.bar([label(c) for c in cols], [0 if math.isnan(v) else v for v in values],
               color=["#888", "#c55", *["#36c"] * (len(cols) - 2)][: len(cols)])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax = axes[3]
    width = 0.4
    xs = range(len(fixed_cols))
    ax.bar([x - width / 2 for x in xs], [_z(r.fixed[c].p50_us) for c in fixed_cols], width,
           label="p50")
    ax.bar([x + width / 2 for x in xs], [_z(r.fixed[c].p99_us) for c in fixed_cols], width,
           label="p99")
    ax.set_xticks(list(xs), [label(c) for c in fixed_cols], rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_title(f"latency at {r.rate:.0f} req/s (µs)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _z(v: float) -> float:
    return 0 if math.isnan(v) else v


def write_plots(r: Results, directory: Path) -> list[tuple[str, str]]:
    """Write the plots that have data; (title, file name) of each, for RESULTS.md."""
    written = []
    if r.figures:
        plot_throughput(r, directory / THROUGHPUT_PNG)
        written.append(("throughput, request rates and fixed-rate latency per column",
                        THROUGHPUT_PNG))
    if r.memory:
        plot_memory(r, directory / MEMORY_PNG)
        written.append(("memory against pods on the node, mesh vs sidecars", MEMORY_PNG))
    return written
