"""Two pods of one service account on one node (``app-node-1-1`` and ``app-node-1-2``, both
``sa/app``): each reaches the destination from its own IP, whichever of them opened a tunnel
first, so the destination's policy, its connection records and its metrics see each pod as
itself. (A pool shared by the node's pods let the second pod ride the first one's tunnel: a
DENY on one pod's IP then hit the other, or missed the denied one.)"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Applied, Cluster, authz, poll

PODS = ("app-node-1-1", "app-node-1-2")


def answered(cluster: Cluster, pod: str, url: str) -> bool:
    return cluster.curl(pod, url, "-o", "/dev/null", timeout=3, check=False).returncode == 0


@pytest.mark.parametrize("first", ["denied", "allowed"])
def test_each_pod_of_one_identity_is_seen_with_its_own_ip(
        cluster: Cluster, applied: Applied, first: str) -> None:
    pods = cluster.pods()
    denied, allowed = PODS
    assert pods[denied]["service_account"] == pods[allowed]["service_account"] == "app", pods
    assert pods[denied]["node"] == pods[allowed]["node"] == "node-1", pods
    server = cluster.ip("server-1")
    url = f"http://{server}:8080/"
    applied(authz("deny-one-pod", "  selector: {matchLabels: {app: server}}\n  action: DENY\n"
                  "  rules:\n  - from:\n    - source: {ipBlocks: "
                  f"[\"{pods[denied]['ip']}/32\"]}}\n"))
    poll("the DENY in force for the denied pod", lambda: not answered(cluster, denied, url))
    started = time.time()
    order = (denied, allowed) if first == "denied" else (allowed, denied)
    for _ in range(3):  # the first pod's tunnel is open (pooled) when the second one connects
        for pod in order:
            got = answered(cluster, pod, url)
            assert got == (pod == allowed), f"{pod} {'answered' if got else 'refused'}: {order}"
    # node-2 recorded (and counted) the allowed pod's connections from its own IP only: the
    # denied pod's never got past policy, and none of the allowed pod's rode its tunnel
    records = [r for r in cluster.admin("node-2", "/connections?limit=200")
               if r["direction"] == "inbound" and r["dst"] == f"{server}:8080"]
    ours = {pods[denied]["ip"], pods[allowed]["ip"]}
    recent = [r for r in records if _after(r["start"], started)
              and r["src"].split(":")[0] in ours]
    assert len(recent) >= 3, recent
    assert {r["src"].split(":")[0] for r in recent} == {pods[allowed]["ip"]}, recent


def _after(rfc3339: str, t: float) -> bool:
    import datetime
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() >= t
