"""Control-plane figures: enrollment latency per pod and policy propagation to every node.

Enrollment: ``count`` extra ``app-*`` pods (half per node) are opted out, then enrolled one at a
time by writing the pod's object back; for each, the agent reports how long it took from
starting the pod's redirection (netns ready and known) until the redirection is live and the
ztunnel has acked its listeners (``enrollSeconds`` in the agent status), and the end-to-end time
from the object write (controller's directory watch, discovery push included).

Policy propagation: an AuthorizationPolicy (``nm-bench-propagation-<i>``, selecting no pod, so it
changes no traffic) is applied with ``meshctl apply -f``; one thread per node, inside the node's
netns, polls the ztunnel's admin ``/config_dump`` (127.0.0.1:15000) every ``POLL_S`` until the
policy is there — the state its policy evaluation reads. Timed from starting ``meshctl apply`` (a
user's view, including meshctl's own start) and from ``apply``'s return (the file is written: the
mesh's part) to the last node; then the policy is deleted and its removal awaited the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import NODES, agent_pods, meshctl, wait_for
from meshctl.local.layout import Layout, default_state_dir
from meshctl.local.nsenter import join_netns

ADMIN = "http://127.0.0.1:15000/config_dump"
POLL_S = 0.005
OPT_OUT = "none"


# --- pod objects in the controller's directory ------------------------------------------------


def pod_objects(prefix: str = "") -> dict[str, tuple[Path, dict[str, Any]]]:
    """The Pod objects of the config directory whose name starts with ``prefix``."""
    config = Layout(default_state_dir()).config_dir
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for f in sorted(config.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Pod" \
                and str(doc["metadata"]["name"]).startswith(prefix):
            out[str(doc["metadata"]["name"])] = (f, doc)
    return out


def write_object(path: Path, doc: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # not *.yaml: the controller ignores it
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def opted_out(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the pod-level opt-out label (pure; ``doc`` is not changed)."""
    out: dict[str, Any] = json.loads(json.dumps(doc))
    out["metadata"].setdefault("labels", {})["nodemesh.io/dataplane-mode"] = OPT_OUT
    return out


def opt_out(objects: dict[str, tuple[Path, dict[str, Any]]], timeout: float = 180) -> None:
    for f, doc in objects.values():
        write_object(f, opted_out(doc))
    wait_for("pods to be opted out", lambda: all(
        agent_pods().get(n, {}).get("status") in (None, "removed") for n in objects), timeout,
        interval=0.1)


def restore(objects: dict[str, tuple[Path, dict[str, Any]]], timeout: float = 180) -> None:
    """Write the objects back as they were (enrolled) and wait until all are redirected."""
    for f, doc in objects.values():
        write_object(f, doc)
    wait_for("pods to be redirected", lambda: all(
        agent_pods().get(n, {}).get("status") == "redirected"
        and agent_pods().get(n, {}).get("ztunnel") for n in objects), timeout, interval=0.1)


# --- enrollment latency -----------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    agent_s: list[float]
    end_to_end_s: list[float]


def pick_per_node(names: Iterable[str], count: int) -> list[str]:
    """``count`` of the ``app-<node>-<k>`` names, half from each node, lowest ``k`` first (pure)."""
    by_node: dict[str, list[tuple[int, str]]] = {}
    for n in names:
        node, _, k = n.removeprefix("app-").rpartition("-")
        by_node.setdefault(node, []).append((int(k), n))
    out: list[str] = []
    for node in sorted(by_node):
        out += [n for _, n in sorted(by_node[node])[: count // len(by_node)]]
    return out


def enrollment_latency(count: int) -> Enrollment:
    """Opt ``count`` of the ``app-*`` pods out, then enroll them one by one (see the module doc)."""
    objects = pod_objects("app-")
    if not objects:
        raise RuntimeError("no app-* pods: start the cluster with --pods-per-node")
    chosen = {n: objects[n] for n in pick_per_node(objects, count)}
    opt_out(chosen)
    result = Enrollment([], [])
    for name, (f, doc) in chosen.items():
        started = time.time()
        write_object(f, doc)
        st = wait_for(f"{name} to be redirected",
                      lambda n=name, t=started: _redirected(n, t), 30)  # type: ignore[misc]
        result.agent_s.append(float(st["enrollSeconds"]))
        result.end_to_end_s.append(float(st["since"]) - started)
    return result


def _redirected(name: str, after: float) -> dict[str, Any] | None:
    st = agent_pods().get(name)
    if st and st.get("status") == "redirected" and st.get("ztunnel") \
            and float(st.get("since", 0)) >= after and st.get("enrollSeconds") is not None:
        return st
    return None


# --- policy propagation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Propagation:
    #: from starting ``meshctl apply -f`` to the policy in force on the last node
    from_apply_s: list[float]
    #: from ``meshctl apply`` returning (the object written) to the same point
    from_write_s: list[float]
    #: the same for ``meshctl delete -f``: from its start to the policy gone everywhere
    removal_s: list[float]


def policy_document(name: str) -> str:
    """A harmless AuthorizationPolicy: DENY for a selector no pod has (pure)."""
    return yaml.safe_dump({
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "nm-bench-nobody"}},
            "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/x/sa/nobody"]}}]}],
        },
    }, sort_keys=False)


def has_policy(dump: dict[str, Any], name: str) -> bool:
    return any(p.get("name") == name and p.get("namespace") == "default"
               for p in dump.get("authorizationPolicies", []))


def _node_netns(node: str) -> str:
    return f"/run/netns/nm-{node}"


def _watch(node: str, name: str, present: bool, timeout: float,
           out: dict[str, float], errors: dict[str, str]) -> None:
    """In this (worker) thread only: enter the node's netns and poll its admin endpoint."""
    try:
        join_netns(_node_netns(node))  # moves this thread only (STYLE 8)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(ADMIN, timeout=5) as resp:
                dump = json.loads(resp.read())
            if has_policy(dump, name) is present:
                out[node] = time.monotonic()
                return
            time.sleep(POLL_S)
        errors[node] = f"policy {name} present={present} not seen within {timeout}s"
    except Exception as exc:  # reported by the caller: a thread must not die silently
        errors[node] = repr(exc)


def _timed(argv: list[str], name: str, present: bool,
           timeout: float = 30) -> tuple[float, float, float]:
    """Start the node watchers, run meshctl; (started, returned, last node) monotonic times."""
    seen: dict[str, float] = {}
    errors: dict[str, str] = {}
    threads = [threading.Thread(target=_watch, args=(n, name, present, timeout, seen, errors),
                                name=f"nm-bench-watch-{n}") for n in NODES]
    started = time.monotonic()
    for t in threads:
        t.start()
    meshctl(*argv)
    returned = time.monotonic()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"policy propagation: {errors}")
    return started, returned, max(seen.values())


def policy_propagation(samples: int) -> Propagation:
    result = Propagation([], [], [])
    with tempfile.TemporaryDirectory(prefix="nm-bench-policy-") as tmp:
        for i in range(samples):
            name = f"nm-bench-propagation-{i}"
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(policy_document(name))
            started, returned, done = _timed(["apply", "-f", str(path)], name, True)
            result.from_apply_s.append(done - started)
            result.from_write_s.append(done - returned)
            started, _, gone = _timed(["delete", "-f", str(path)], name, False)
            result.removal_s.append(gone - started)
    return result


# --- the ztunnel's view -----------------------------------------------------------------------


def config_dump(node: str, timeout: float = 10) -> dict[str, Any]:
    """One ``/config_dump`` of the node's ztunnel, fetched from a worker thread in its netns."""
    box: dict[str, Any] = {}

    def fetch() -> None:
        try:
            join_netns(_node_netns(node))
            with urllib.request.urlopen(ADMIN, timeout=timeout) as resp:
                box["dump"] = json.loads(resp.read())
        except Exception as exc:  # handed to the caller below
            box["error"] = exc

    t = threading.Thread(target=fetch, name=f"nm-bench-dump-{node}")
    t.start()
    t.join()
    if "error" in box:
        raise RuntimeError(f"config_dump of {node}: {box['error']!r}") from box["error"]
    dump: dict[str, Any] = box["dump"]
    return dump


def wait_listeners(node: str, names: Iterable[str], timeout: float = 120) -> None:
    """Until the node's ztunnel has listeners bound in every named pod."""
    wanted = set(names)

    def ready() -> bool:
        try:
            dump = config_dump(node)
        except RuntimeError:
            return False  # restarting
        bound = {p["name"] for p in dump.get("pods", []) if p.get("listeners")}
        return wanted <= bound
    wait_for(f"{node}'s ztunnel to bind listeners in {len(wanted)} pods", ready, timeout,
             interval=0.2)


def restart_ztunnels() -> None:
    """Fresh ztunnel processes on every node (memory figures must not count an earlier run's
    heap); each is ready, and has every enrolled pod's listeners, before this returns."""
    for node in NODES:
        meshctl("local", "restart", "ztunnel", "--node", node, timeout=300)
    for node in NODES:
        wait_listeners(node, [str(p.get("name")) for p in node_pods(node)
                              if p.get("status") == "redirected"])


def node_pods(node: str) -> list[dict[str, Any]]:
    """The pods one node's agent reports (its status file)."""
    f = Layout(default_state_dir()).nodes_dir / node / "agent-status.json"
    pods: list[dict[str, Any]] = json.loads(f.read_text()).get("pods", [])
    return pods
