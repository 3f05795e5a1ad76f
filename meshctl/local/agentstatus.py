"""Reading a node agent's status file (``--status-file``, pure parsing).

docs/CONTRACTS.md does not fix this file's schema yet; meshctl reads, tolerantly::

    {"node": "node-1",
     "pods": [{"uid": "...", "name": "...", "namespace": "...",
               "state": "redirected" | "pending" | "failed", "redirection": "iptables" | null,
               "error": "..."}]}

``pods`` may also be an object keyed by uid. Without ``state``, a pod counts as ``redirected``
when ``redirected`` is true or ``redirection`` names a mode. Unknown shapes give no pods.
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
        state = entry.get("state")
        if not isinstance(state, str):
            mode = entry.get("redirection")
            state = REDIRECTED if entry.get("redirected") is True or (
                isinstance(mode, str) and mode not in ("", "none")
            ) else "pending"
        error = entry.get("error")
        out[uid] = PodRedirection(uid, state, error if isinstance(error, str) else None)
    return out
