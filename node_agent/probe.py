"""``nodemesh-agent-probe [--ready] STATUS_FILE``: the DaemonSet's liveness and readiness probe
for the node agent, from the status file the agent rewrites at least every 5 seconds.

Live: the file was rewritten within ``--max-age`` seconds (the agent's event loop runs).
Ready, in addition: the ztunnel is connected and, on Kubernetes, the pod and namespace watches
have synced and the CNI plugin is chained (a socket file alone proves nothing: a killed agent
leaves it behind). Exit 0 if so, else 1 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: the agent rewrites the file every 5 s; six missed rewrites means it is stuck
DEFAULT_MAX_AGE_SECONDS = 30.0


def problems(doc: Mapping[str, object], now: float, max_age: float, ready: bool) -> list[str]:
    """Why the agent is not live (or not ready); empty if it is."""
    out: list[str] = []
    updated = doc.get("updated")
    if not isinstance(updated, int | float):
        return ["the status file has no 'updated' time"]
    if now - updated > max_age:
        out.append(f"the status was last written {now - updated:.0f}s ago (limit {max_age:g}s)")
    if not ready:
        return out
    ztunnel = doc.get("ztunnel")
    if not isinstance(ztunnel, Mapping) or ztunnel.get("connected") is not True:
        err = ztunnel.get("lastError") if isinstance(ztunnel, Mapping) else None
        out.append(f"the ztunnel is not connected ({err or 'no connection yet'})")
    kube = doc.get("kubernetes")
    if isinstance(kube, Mapping):
        if kube.get("synced") is not True:
            out.append("the pod and namespace watches have not synced yet")
        if kube.get("cniInstalled") is False:
            out.append("the CNI plugin is not chained into the node's CNI config yet")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nodemesh-agent-probe", description=__doc__)
    p.add_argument("status_file", type=Path)
    p.add_argument("--ready", action="store_true", help="readiness, not only liveness")
    p.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_SECONDS)
    args = p.parse_args(argv)
    try:
        doc = json.loads(args.status_file.read_text())
    except (OSError, ValueError) as exc:
        print(f"nodemesh-agent-probe: cannot read {args.status_file}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(doc, dict):
        print(f"nodemesh-agent-probe: {args.status_file} is not a JSON object", file=sys.stderr)
        return 1
    found = problems(doc, time.time(), args.max_age, args.ready)
    for reason in found:
        print(f"nodemesh-agent-probe: {reason}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
