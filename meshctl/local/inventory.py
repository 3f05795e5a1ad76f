"""``meshctl local pods``: what the config dir says about each pod, plus what the agents report.

Enrollment is computed from the *current* config objects (a label applied later counts), with the
rule of :func:`meshapi.enrollment.is_enrolled`; the redirection state comes from each node's
agent status file when there is one. :func:`rows` is pure; :func:`collect` reads the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from meshapi.enrollment import is_enrolled
from meshctl import configdir
from meshctl.local import agentstatus
from meshctl.local.layout import Layout


@dataclass(frozen=True, slots=True)
class PodRow:
    name: str
    namespace: str
    service_account: str
    node: str
    ip: str
    enrolled: bool
    #: the agent's state for the pod (``redirected``, ``pending``…), ``None`` when unreported
    redirection: str | None
    uid: str
    #: how the pod is redirected (``iptables``, ``ebpf``), ``None`` when unreported
    mode: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _get(obj: Mapping[str, object], *path: str) -> object:
    cur: object = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def rows(
    docs: Iterable[object], statuses: Mapping[str, agentstatus.PodRedirection]
) -> list[PodRow]:
    maps: list[Mapping[str, object]] = [d for d in docs if isinstance(d, Mapping)]
    ns_labels = {
        str(_get(d, "metadata", "name")): _str_map(_get(d, "metadata", "labels"))
        for d in maps
        if d.get("kind") == "Namespace"
    }
    out: list[PodRow] = []
    for d in maps:
        if d.get("kind") != "Pod" or d.get("apiVersion") != "v1":
            continue
        namespace = str(_get(d, "metadata", "namespace") or "default")
        uid = str(_get(d, "metadata", "uid") or "")
        status = statuses.get(uid)
        out.append(
            PodRow(
                name=str(_get(d, "metadata", "name") or ""),
                namespace=namespace,
                service_account=str(_get(d, "spec", "serviceAccountName") or "default"),
                node=str(_get(d, "spec", "nodeName") or ""),
                ip=str(_get(d, "status", "podIP") or ""),
                enrolled=is_enrolled(
                    _str_map(_get(d, "metadata", "labels")), ns_labels.get(namespace, {})
                ),
                redirection=status.state if status is not None else None,
                uid=uid,
                mode=status.mode if status is not None else None,
            )
        )
    return sorted(out, key=lambda r: (r.namespace, r.name))


def collect(layout: Layout) -> list[PodRow]:
    statuses: dict[str, agentstatus.PodRedirection] = {}
    if layout.nodes_dir.is_dir():
        for status_file in sorted(layout.nodes_dir.glob("*/agent-status.json")):
            try:
                statuses.update(agentstatus.parse(status_file.read_text()))
            except OSError:
                continue
    return rows((doc for _path, doc in configdir.read_all(layout.config_dir)), statuses)


def table(pods: list[PodRow], nodes: Iterable[tuple[str, str, str]] = ()) -> str:
    """The pods, then one line per node: its redirection mode and why (``nodes`` from
    :func:`node_modes`)."""
    header = ("NAMESPACE", "NAME", "SERVICE ACCOUNT", "NODE", "IP", "ENROLLED", "REDIRECTION",
              "MODE")
    lines: list[tuple[str, ...]] = [header]
    for r in pods:
        lines.append((r.namespace, r.name, r.service_account, r.node, r.ip,
                      "yes" if r.enrolled else "no",
                      r.redirection or ("-" if not r.enrolled else "unknown"),
                      (r.mode or "-") if r.redirection is not None else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(col.ljust(w) for col, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
    footer = [f"{node}: redirect mode {mode} ({reason})" for node, mode, reason in nodes]
    return "\n\n".join([text, "\n".join(footer)]) if footer else text


def node_modes(layout: Layout) -> list[tuple[str, str, str]]:
    """(node, mode, reason) of every node whose agent wrote a status file."""
    out: list[tuple[str, str, str]] = []
    if layout.nodes_dir.is_dir():
        for status_file in sorted(layout.nodes_dir.glob("*/agent-status.json")):
            try:
                found = agentstatus.node_mode(status_file.read_text())
            except OSError:
                continue
            if found is not None:
                out.append(found)
    return out


def collect_from(state_dir: Path) -> list[PodRow]:
    return collect(Layout(state_dir))
