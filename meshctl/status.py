"""``meshctl status``: the controller's ``/debug/status`` (config version, configuration errors
with file/object/field, connected nodes) and each local node's agent status file (redirection
mode, ztunnel connection, pods by redirection state). Rendering is pure (:func:`render`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def read_agent_statuses(nodes_dir: Path) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for path in sorted(nodes_dir.glob("*/agent-status.json")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            out.append({"node": path.parent.name, "error": f"cannot read {path}"})
            continue
        if isinstance(raw, Mapping):
            out.append(raw)
    return out


def render(controller: Mapping[str, Any], agents: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        f"controller: ready={controller.get('ready')} version={controller.get('version')} "
        f"epoch={controller.get('epoch')} workloads={controller.get('workloads')} "
        f"services={controller.get('services')} "
        f"authorizationPolicies={controller.get('authorizationPolicies', 0)} "
        f"peerAuthentications={controller.get('peerAuthentications', 0)}",
    ]
    errors = controller.get("configErrors") or []
    lines.append(f"config errors: {len(errors)}")
    for e in errors:
        if isinstance(e, Mapping):
            parts = [str(e.get(k) or "") for k in ("file", "object", "field")]
            lines.append("  " + ": ".join(p for p in parts if p) + f": {e.get('message')}")
    warnings = controller.get("policyWarnings") or []
    if warnings:
        lines.append(f"policy warnings: {len(warnings)}")
    for w in warnings:
        if isinstance(w, Mapping):
            parts = [str(w.get(k) or "") for k in ("file", "object", "field")]
            lines.append("  " + ": ".join(p for p in parts if p) + f": {w.get('message')}")
    nodes = controller.get("connectedNodes") or []
    lines.append("connected nodes: " + (", ".join(
        str(n.get("node")) for n in nodes if isinstance(n, Mapping)) or "none"))
    for a in agents:
        if "error" in a and "pods" not in a:
            lines.append(f"node {a.get('node')}: {a['error']}")
            continue
        zt_raw, pods_raw = a.get("ztunnel"), a.get("pods")
        zt: Mapping[str, Any] = zt_raw if isinstance(zt_raw, Mapping) else {}
        pods: list[Any] = pods_raw if isinstance(pods_raw, list) else []
        states = Counter(str(p.get("status")) for p in pods if isinstance(p, Mapping))
        lines.append(
            f"node {a.get('node')}: redirection={a.get('mode')}"
            + (f" ({a.get('modeReason')})" if a.get("modeReason") else "")
            + f" ztunnel={'connected' if zt.get('connected') else 'disconnected'}"
            + (f" ({zt.get('error')})" if zt.get("error") else "")
            + " pods: " + (", ".join(f"{k}={v}" for k, v in sorted(states.items())) or "none")
        )
    return "\n".join(lines)
