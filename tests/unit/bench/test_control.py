from __future__ import annotations

from typing import Any

import yaml

from bench.control import has_policy, opted_out, pick_per_node, policy_document
from meshapi.policy import AuthorizationPolicy


def test_pick_per_node_takes_half_from_each_node_lowest_first() -> None:
    names = [f"app-node-{n}-{k}" for n in (1, 2) for k in (10, 2, 1, 3)]
    assert pick_per_node(names, 4) == ["app-node-1-1", "app-node-1-2",
                                       "app-node-2-1", "app-node-2-2"]


def test_opted_out_copies() -> None:
    doc: dict[str, Any] = {"kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}}
    out = opted_out(doc)
    assert out["metadata"]["labels"] == {"a": "b", "nodemesh.io/dataplane-mode": "none"}
    assert doc["metadata"]["labels"] == {"a": "b"}


def test_policy_document_is_a_valid_policy_selecting_no_pod() -> None:
    doc = yaml.safe_load(policy_document("nm-bench-propagation-1"))
    meta = doc["metadata"]
    policy = AuthorizationPolicy.from_spec(meta["namespace"], meta["name"], doc["spec"])
    assert policy.name == "nm-bench-propagation-1" and policy.namespace == "default"
    assert doc["spec"]["selector"]["matchLabels"] == {"app": "nm-bench-nobody"}
    dump = {"authorizationPolicies": [policy.to_wire()]}
    assert has_policy(dump, "nm-bench-propagation-1")
    assert not has_policy(dump, "other")
    assert not has_policy({}, "nm-bench-propagation-1")
