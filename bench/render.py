"""RESULTS.md from the measurements (pure: no I/O). Every figure comes from a measurement; a
``nan`` is a failed one and shows as ``failed``; ratios are within the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.common import percentile, ratio
from bench.control import Enrollment, Propagation
from bench.cpu import Cpu
from bench.memory import STEPS, Mem, PerConnection, ScanPoint
from bench.throughput import ROWS, Figures

DIRECT = "direct"
SIDECARS = "sidecars"
#: the column of the eBPF mode with the agents' --ebpf-sockmap
SOCKMAP = "ebpf+sockmap"
#: where a ztunnel with --workers N would go; the ztunnel has no such option yet
WORKERS_COLUMN = "mesh (ebpf, --workers 2)"


@dataclass(frozen=True)
class FixedRate:
    p50_us: float
    p99_us: float
    p999_us: float


@dataclass
class Results:
    started: str
    minutes: float
    commit: str
    cores: int
    kernel: str
    seconds: int
    repeat: int
    rate: float
    rate_connections: int
    #: column -> figures; columns: DIRECT, SIDECARS, then the mesh modes
    figures: dict[str, Figures] = field(default_factory=dict)
    cpu: dict[str, Cpu] = field(default_factory=dict)
    fixed: dict[str, FixedRate] = field(default_factory=dict)
    memory: list[ScanPoint] = field(default_factory=list)
    per_conn: PerConnection | None = None
    enroll: dict[str, Enrollment] = field(default_factory=dict)
    enroll_pods: dict[str, int] = field(default_factory=dict)
    propagation: Propagation | None = None
    memory_mode: str = ""
    plots: list[tuple[str, str]] = field(default_factory=list)  # (title, file name)

    @property
    def modes(self) -> list[str]:
        return [c for c in self.figures if c not in (DIRECT, SIDECARS)]


def fmt(value: float, spec: str, unit: str = "") -> str:
    if math.isnan(value):
        return "failed"
    return f"{spec.format(value)} {unit}".rstrip()


def fmt_ratio(value: float, base: float) -> str:
    r = ratio(value, base)
    return "n/a" if math.isnan(r) else f"{r:.2f}"


def label(column: str) -> str:
    return column if column in (DIRECT, SIDECARS) else f"mesh ({column})"


def table(header: list[str], rows: list[list[str]], align_first_left: bool = True) -> list[str]:
    sep = ["---" if i == 0 and align_first_left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def main_table(r: Results) -> list[str]:
    cols = [c for c in (DIRECT, SIDECARS, *r.modes) if c in r.figures]
    others = [c for c in cols if c != DIRECT]
    header = ["measurement", *(label(c) for c in cols),
              *(f"{c}/direct" for c in others),
              *(f"{c}/sidecars" for c in r.modes if SIDECARS in r.figures)]
    rows = []
    for title, attr, unit, spec in ROWS:
        values = {c: getattr(r.figures[c], attr) for c in cols}
        d = values.get(DIRECT, math.nan)
        s = values.get(SIDECARS, math.nan)
        rows.append([title, *(fmt(values[c], spec, unit) for c in cols),
                     *(fmt_ratio(values[c], d) for c in others),
                     *(fmt_ratio(values[c], s) for c in r.modes if SIDECARS in r.figures)])
    return table(header, rows)


def cpu_table(r: Results) -> list[str]:
    cols = [c for c in (SIDECARS, *r.modes) if c in r.cpu]
    header = ["load", *(f"{label(c)} (s/1000 req)" for c in cols),
              *(f"{c}/sidecars" for c in cols if c != SIDECARS and SIDECARS in r.cpu)]
    rows = []
    for title, attr in (("wrk, 50 connections, closed loop", "wrk_s_per_1000"),
                        (f"{r.rate:.0f} req/s, {r.rate_connections} connections, open loop",
                         "fixed_rate_s_per_1000")):
        vals = {c: getattr(r.cpu[c], attr) for c in cols}
        s = vals.get(SIDECARS, math.nan)
        rows.append([title, *(fmt(vals[c], "{:.3f}") for c in cols),
                     *(fmt_ratio(vals[c], s) for c in cols
                       if c != SIDECARS and SIDECARS in r.cpu)])
    return table(header, rows)


def fixed_rate_table(r: Results) -> list[str]:
    cols = [c for c in (DIRECT, SIDECARS, *r.modes) if c in r.fixed]
    d = r.fixed.get(DIRECT)
    s = r.fixed.get(SIDECARS)
    header = ["column", "p50", "p99", "p99.9", "added p50", "added p99",
              "added p50 / sidecars'", "added p99 / sidecars'"]
    rows = []
    for c in cols:
        f = r.fixed[c]
        add50 = f.p50_us - d.p50_us if d else math.nan
        add99 = f.p99_us - d.p99_us if d else math.nan
        s50 = s.p50_us - d.p50_us if s and d else math.nan
        s99 = s.p99_us - d.p99_us if s and d else math.nan
        mine = c not in (DIRECT, SIDECARS)
        rows.append([label(c), fmt(f.p50_us, "{:.0f}", "µs"), fmt(f.p99_us, "{:.0f}", "µs"),
                     fmt(f.p999_us, "{:.0f}", "µs"),
                     "—" if c == DIRECT else fmt(add50, "{:+.0f}", "µs"),
                     "—" if c == DIRECT else fmt(add99, "{:+.0f}", "µs"),
                     _added_ratio(add50, s50) if mine else "—",
                     _added_ratio(add99, s99) if mine else "—"])
    return table(header, rows)


def _added_ratio(added: float, sidecars_added: float) -> str:
    """What the mesh adds over what the sidecars add; n/a unless the sidecars added something
    (a ratio to a negative or zero difference, which noise can give, means nothing)."""
    return fmt_ratio(added, sidecars_added) if sidecars_added > 0 else "n/a"


def _mib(m: Mem) -> tuple[str, str]:
    return fmt(m.rss_mib, "{:.1f}", "MiB"), fmt(m.pss_mib, "{:.1f}", "MiB")


def memory_table(r: Results) -> list[str]:
    header = ["pods on node-1", "mesh node-1 RSS", "mesh node-1 PSS", "sidecars RSS (sum)",
              "sidecars PSS (sum)", "mesh/sidecars (PSS)", "mesh node-2 PSS",
              "server-1's sidecar PSS"]
    rows = []
    for p in r.memory:
        rows.append([str(p.pods), *_mib(p.mesh_node1), *_mib(p.sidecars),
                     fmt_ratio(p.mesh_node1.pss_kib, p.sidecars.pss_kib),
                     _mib(p.mesh_node2)[1], _mib(p.server_sidecar)[1]])
    return table(header, rows)


def per_conn_table(pc: PerConnection) -> list[str]:
    mesh, side = pc.per_conn_mesh(), pc.per_conn_sidecar()
    header = ["", "connections", "growth, both ends (PSS)", "per connection RSS",
              "per connection PSS"]

    def kib(v: float) -> str:
        return fmt(v, "{:.1f}", "KiB")
    both_mesh = pc.mesh_node1 + pc.mesh_node2
    both_side = pc.client_sidecar + pc.server_sidecar
    rows = [
        ["mesh (node-1 + node-2: agents + ztunnels)", f"{pc.conns_mesh}",
         fmt(both_mesh.pss_mib, "{:.1f}", "MiB"), kib(mesh.rss_kib), kib(mesh.pss_kib)],
        ["sidecars (10 pods' + server-1's)", f"{pc.conns_sidecar}",
         fmt(both_side.pss_mib, "{:.1f}", "MiB"), kib(side.rss_kib), kib(side.pss_kib)],
        ["mesh/sidecars", "", "", fmt_ratio(mesh.rss_kib, side.rss_kib),
         fmt_ratio(mesh.pss_kib, side.pss_kib)],
    ]
    return table(header, rows)


def ms_quantiles(values: list[float]) -> list[str]:
    return [fmt(percentile(values, q) * 1000, "{:.1f}", "ms") for q in (50, 99)]


def render(r: Results) -> str:
    cols = ", ".join(label(c) for c in (DIRECT, SIDECARS, *r.modes) if c in r.figures)
    lines = [
        "# Benchmark results",
        "",
        "Produced by `python -m bench` (`make bench`); do not edit by hand.",
        "",
        f"- run: {r.started}, {r.minutes:.1f} min, commit `{r.commit or 'unknown'}`, "
        f"{r.cores} cores (shared with other work: figures are noisy, compare the ratios "
        f"within this run), kernel {r.kernel}",
        f"- path: `client` (node-1) → `server-1` (node-2), pod IP, {r.seconds} s per "
        f"measurement, median of {r.repeat} runs; columns: {cols}",
        "- direct: namespace `default` unenrolled (plain TCP over the same veths and bridges)",
        "- sidecars: unenrolled, one HAProxy 2.6 per pod (`nbthread 1`, `tune.bufsize 262144`), "
        "mutual TLS 1.3 with ECDSA P-256 certificates of a throwaway CA, both peers verified; "
        "the client pod's outbound TCP is captured by iptables `REDIRECT` in its netns (the "
        "sidecar's own connections exempt by its uid), the client sidecar connects with TLS to "
        "the server's sidecar, which connects to the app on 127.0.0.1 (bench/sidecar.py)",
        "- mesh: enrolled (client → ztunnel node-1 → HBONE/mTLS → ztunnel node-2 → server), "
        "the node agents in each redirection mode (`--redirect-mode`)"
        + (f"; `{SOCKMAP}`: eBPF mode with `--ebpf-sockmap`" if SOCKMAP in r.figures else ""),
        "- both pods run with `net.ipv4.tcp_tw_reuse=1` and ports 1024-65000 (load-test "
        "tuning, so new-connection rates are not capped by TIME_WAIT), 15000-15100 reserved "
        "for the proxies",
        "- the sample app is a one-process asyncio (uvloop) HTTP server: in the direct column "
        "request rates are bounded by it",
        "- `failed`: at least one run of that measurement failed (its error is in the run's "
        "output); no figure is given from the others",
        "",
        *main_table(r),
    ]
    if r.cpu:
        lines += [
            "",
            "## CPU per 1000 requests",
            "",
            "- `utime + stime` of the proxies from `/proc/<pid>/stat` before and after the "
            "load: the mesh's two ztunnels (both nodes), or the two HAProxy sidecars; "
            "`GET /bytes/1024` (1 KiB responses); divided by the requests completed",
            "- closed loop: `wrk -t1 -c50` for the measurement time (each column at its own "
            "rate); open loop: the fixed-rate run below (the same rate in every column)",
            "",
            *cpu_table(r),
        ]
    if r.fixed:
        lines += [
            "",
            f"## Latency at a fixed rate ({r.rate:.0f} req/s, below saturation)",
            "",
            f"- open loop (`bench/constant_rate.py`, wrk2-style): {r.rate:.0f} requests/s of "
            f"`GET /bytes/1024` on {r.rate_connections} keep-alive connections for "
            f"{r.seconds} s after 1 s of warm-up; each latency runs from the request's "
            "*intended* send time, so a stall counts against every request it delayed "
            "(no coordinated omission); a `timerfd` keeps the schedule to the microsecond",
            "- added: the column's figure minus direct's (the client's own cost cancels); "
            "the last two columns compare what the mesh adds with what the sidecars add",
            "",
            *fixed_rate_table(r),
        ]
    if r.memory:
        lines += [
            "",
            f"## Memory against pods on the node (mesh in {r.memory_mode} mode)",
            "",
            f"- pods `app-node-1-1…{max(STEPS)}` on node-1, each holding 10 idle HTTP "
            "connections to `server-1` (node-2), opened from inside the pod "
            "(`bench/holder.py`), one request answered on each",
            "- mesh: the pods enrolled in growing subsets (every other pod of node-1 and every "
            "app pod of node-2 opted out, so node-2 serves `server-1` alone; the ztunnels "
            "restarted first); RSS and PSS of node-1's agent + ztunnel from "
            "`/proc/<pid>/smaps_rollup`, summed; the cluster knows all its pods (404 "
            "workloads in every discovery snapshot)",
            "- sidecars: namespace unenrolled, one HAProxy (the sidecar column's configuration) "
            "per pod plus `server-1`'s; the pods' sidecars summed",
            "- PSS divides each shared page among the processes mapping it, so a sum of PSS "
            "is the fair total (a sum of RSS counts HAProxy's shared text once per process)",
            "",
            *memory_table(r),
        ]
    if r.per_conn:
        lines += [
            "",
            "## Memory per open connection",
            "",
            "- idle connections from 10 app pods of node-1 to `server-1` (one request answered "
            "on each), through fresh proxies (ztunnels restarted; new sidecars); the growth of "
            "both ends' memory (mesh: both nodes' agent + ztunnel; sidecars: the 10 pods' and "
            "`server-1`'s) divided by the connections. Ten pods because the ztunnel accepts at "
            "most 64 HBONE connections of 100 streams from one peer pod",
            "- one HAProxy proxies at most as many connections as half the hard "
            "`RLIMIT_NOFILE` (20 000 here) allows, two descriptors each: the sidecars' figure "
            "is taken at that count",
            "",
            *per_conn_table(r.per_conn),
        ]
    if r.enroll:
        lines += [
            "",
            "## Enrollment latency (pods enrolled one at a time, per mode)",
            "",
            "- agent: from the start of the pod's redirection (netns ready and known to the "
            "agent) to redirection live and the ztunnel's ack that the pod's listeners are bound",
            "- end to end: from writing the pod's object (enrolled) into the config directory "
            "(the controller watches it) to the same point",
            "",
            *table(["mode", "pods", "agent p50", "agent p99", "end to end p50",
                    "end to end p99"],
                   [[m, str(len(e.agent_s)), *ms_quantiles(e.agent_s),
                     *ms_quantiles(e.end_to_end_s)] for m, e in r.enroll.items()]),
        ]
    if r.propagation:
        p = r.propagation
        lines += [
            "",
            f"## Policy propagation ({len(p.from_apply_s)} policies, one at a time)",
            "",
            "- an AuthorizationPolicy (DENY for a selector no pod has) applied with "
            "`meshctl apply -f`; in force when every node's ztunnel shows it in its admin "
            "`/config_dump` (the state its policy evaluation reads), polled every 5 ms from "
            "inside each node's netns; then deleted with `meshctl delete -f`",
            "",
            *table(["", "p50", "p99"], [
                ["from starting `meshctl apply` (its own start included)",
                 *ms_quantiles(p.from_apply_s)],
                ["from `meshctl apply` returning (object written)",
                 *ms_quantiles(p.from_write_s)],
                ["removal: from starting `meshctl delete`", *ms_quantiles(p.removal_s)],
            ]),
        ]
    lines += [
        "",
        "## Not measured",
        "",
        f"- `{WORKERS_COLUMN}`: the ztunnel has no `--workers` option yet (more than one "
        "worker process per node, `SO_REUSEPORT` on each pod's listeners). Its column goes "
        "in `bench/__main__.py` (`workers_column`), which measures nothing until the option "
        "exists.",
    ]
    if SOCKMAP not in r.figures:
        lines.append(f"- `{SOCKMAP}`: left out by default to save time (`--ebpf-sockmap on`).")
    if r.plots:
        lines += ["", "## Plots", ""]
        lines += [f"- [{title}]({name})" for title, name in r.plots]
    return "\n".join(lines) + "\n"
