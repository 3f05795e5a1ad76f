"""Reading a node agent's status file (``--status-file``, pure parsing).

docs/CONTRACTS.md does not fix this file's schema yet; the agent writes (node_agent/app.py)::

    {"node": "node-1", ...,
     "pods": [{"uid": "...", "name": "...", "namespace": "...", "mode": "iptables",
               "status": "pending" | "redirected" | "error" | "removed",
               "ztunnel": true, "lastError": "..." | null}]}

meshctl reads it tolerantly: ``state`` is accepted for ``status``, ``error`` for ``lastError``,
``pods`` may be an object keyed by uid, and without a status a pod counts as ``redirected`` when
``redirected`` is true. A pod is :attr:`PodRedirection.ready` once it is redirected and the agent
does not report it missing from the ztunnel. Unknown shapes give no pods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

REDIRECTED = "redirected"


@dataclass(frozen=True, slots=True)
class PodRedirection:
    uid: str
    state: str
    error: str | None = None
    #: whether the agent handed the pod to the ztunnel; None when not reported
    in_ztunnel: bool | None = None
    #: the pod's redirection mode (``iptables``, ``ebpf``); None when not reported
    mode: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == REDIRECTED and self.in_ztunnel is not False


def parse(text: str) -> dict[str, PodRedirection]:
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    pods = raw.get("pods")
    entries: list[tuple[str, object]] = []
    if isinstance(pods, list):
        entries = [(str(p.get("uid", "")), p) for p in pods if isinstance(p, dict)]
    elif isinstance(pods, dict):
        entries = [(str(uid), p) for uid, p in pods.items()]
    out: dict[str, PodRedirection] = {}
    for uid, entry in entries:
        if not uid or not isinstance(entry, dict):
            continue
        state = entry.get("status", entry.get("state"))
        if not isinstance(state, str):
            state = REDIRECTED if entry.get("redirected") is True else "pending"
        error = entry.get("lastError", entry.get("error"))
        in_ztunnel = entry.get("ztunnel")
        mode = entry.get("mode")
        out[uid] = PodRedirection(
            uid,
            state,
            error if isinstance(error, str) else None,
            in_ztunnel if isinstance(in_ztunnel, bool) else None,
            mode if isinstance(mode, str) else None,
        )
    return out


def node_mode(text: str) -> tuple[str, str, str] | None:
    """(node, redirect mode, why that mode) from a status file; None when not reported."""
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    node, mode, reason = raw.get("node"), raw.get("redirectMode"), raw.get("redirectModeReason")
    if not isinstance(node, str) or not isinstance(mode, str):
        return None
    return node, mode, reason if isinstance(reason, str) else ""
