from __future__ import annotations

import itertools
import json
from pathlib import Path

from meshapi.ids import PodUid
from meshctl import configdir
from meshctl.cli import main
from meshctl.local import agentstatus, inventory, objects, topology
from meshctl.local.layout import Layout


def _cluster(tmp_path: Path) -> tuple[topology.Topology, Layout]:
    counter = itertools.count(1)
    topo = topology.build(2, 0, lambda: PodUid(f"uid-{next(counter)}"))
    layout = Layout(tmp_path)
    configdir.write(layout.config_dir, ((objects.object_filename(o), o)
                                        for o in objects.topology_objects(topo)))
    return topo, layout


def test_rows_from_config_and_agent_status(tmp_path: Path) -> None:
    topo, layout = _cluster(tmp_path)
    status = layout.agent_status(topo.nodes[0])
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"node": "node-1", "pods": [
        {"uid": "uid-1", "state": "redirected", "redirection": "iptables"},
        {"uid": "uid-3", "state": "failed", "error": "no netns"},
    ]}))
    rows = {r.name: r for r in inventory.collect(layout)}
    assert (rows["client"].enrolled, rows["client"].redirection) == (True, "redirected")
    assert rows["server-2"].redirection == "failed"
    assert rows["server-1"].redirection is None
    assert (rows["outsider"].enrolled, rows["outsider"].namespace, rows["outsider"].ip) == (
        False, "legacy", "10.78.2.3")
    table = inventory.table(list(rows.values()))
    assert table.splitlines()[0].split()[:3] == ["NAMESPACE", "NAME", "SERVICE"]


def test_enrollment_follows_applied_labels(tmp_path: Path, capsys: object) -> None:
    _topo, layout = _cluster(tmp_path)
    opt_out = tmp_path / "opt-out.yaml"
    doc = (layout.config_dir / "pod.default.client.yaml").read_text()
    opt_out.write_text(doc.replace("labels: {}", "labels: {nodemesh.io/dataplane-mode: none}"))
    enroll = tmp_path / "legacy.yaml"
    enroll.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: legacy\n"
                      "  labels: {nodemesh.io/dataplane-mode: enabled}\n")
    assert main(["apply", "-f", str(opt_out), "-f", str(enroll), "--state-dir", str(tmp_path)]) == 0
    rows = {r.name: r.enrolled for r in inventory.collect(layout)}
    assert rows == {"client": False, "server-1": True, "server-2": True, "outsider": True}
    assert main(["local", "pods", "--json", "--state-dir", str(tmp_path)]) == 0


def test_agent_status_shapes() -> None:
    agent = agentstatus.parse(json.dumps({"node": "node-1", "pods": [
        {"uid": "a", "mode": "iptables", "status": "redirected", "ztunnel": True},
        {"uid": "b", "mode": "iptables", "status": "redirected", "ztunnel": False},
        {"uid": "c", "mode": "iptables", "status": "error", "lastError": "boom"},
    ]}))
    assert {u: (s.state, s.ready) for u, s in agent.items()} == {
        "a": ("redirected", True), "b": ("redirected", False), "c": ("error", False)}
    assert agent["c"].error == "boom"
    by_map = agentstatus.parse('{"pods": {"a": {"redirected": true}}}')
    assert by_map["a"].state == "redirected"
    assert agentstatus.parse("not json") == {} and agentstatus.parse("[1]") == {}
