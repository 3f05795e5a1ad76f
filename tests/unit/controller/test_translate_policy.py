"""controller.translate: AuthorizationPolicy and PeerAuthentication (security.nodemesh.io/v1)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.translate import SourceObject, translate
from meshapi.discovery import DiscoveryState, Snapshot, diff_to_delta
from meshapi.policy import Action, MtlsMode


def authz(spec: Any, name: str = "deny-admin", ns: str = "default", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": spec,
    }


def peer(spec: Any, name: str = "pa", ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


GOOD = authz({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})


def test_policies_translate() -> None:
    t = translate([SourceObject("p.yaml", 0, GOOD),
                   SourceObject("p.yaml", 1, peer({"mtls": {"mode": "PERMISSIVE"}}))])
    assert t.errors == ()
    assert t.authorization_policies["default/deny-admin"].action is Action.DENY
    assert t.peer_authentications["default/pa"].mode is MtlsMode.PERMISSIVE


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown field", authz({"actions": "DENY"}), "spec.actions", "unknown field"),
    ("bad CIDR", authz({"rules": [{"from": [{"source": {"ipBlocks": ["10.1.2.0/33"]}}]}]}),
     "spec.rules[0].from[0].source.ipBlocks[0]", "bad CIDR"),
    ("bad action", authz({"action": "BLOCK"}), "spec.action", "unknown action"),
    ("malformed principal", authz({"rules": [{"from": [{"source": {"principals": ["bob"]}}]}]}),
     "spec.rules[0].from[0].source.principals[0]", "malformed principal"),
    ("unknown top-level field", {**GOOD, "specs": {}}, "specs", "unknown field"),
    ("bad dry-run value", authz({}, annotations={"nodemesh.io/dry-run": "yes"}),
     "metadata.annotations[nodemesh.io/dry-run]", "must be"),
    ("bad mtls mode", peer({"mtls": {"mode": "OFF"}}), "spec.mtls.mode", "unknown mtls mode"),
    ("wrong apiVersion", {**GOOD, "apiVersion": "security.istio.io/v1"}, "apiVersion",
     "unsupported apiVersion"),
]


@pytest.mark.parametrize(("case", "body", "path", "text"), BAD, ids=[b[0] for b in BAD])
def test_bad_policies_are_rejected(case: str, body: dict[str, Any], path: str, text: str) -> None:
    t = translate([SourceObject("p.yaml", 0, body)])
    assert len(t.errors) == 1
    issue = t.errors[0]
    assert issue.source == "p.yaml" and issue.field == path and text in issue.message
    assert t.authorization_policies == {} and t.peer_authentications == {}


def test_last_good_policy_stays_when_it_turns_invalid() -> None:
    first = translate([SourceObject("p.yaml", 0, GOOD)])
    bad = authz({"action": "BLOCK"})
    second = translate([SourceObject("p.yaml", 0, bad)], last_good=first.accepted)
    assert second.errors and "AuthorizationPolicy default/deny-admin" in second.errors[0].object
    assert second.authorization_policies == first.authorization_policies


def test_discovery_carries_policies() -> None:
    t = translate([SourceObject("p.yaml", 0, GOOD),
                   SourceObject("p.yaml", 1, peer({"mtls": {"mode": "STRICT"}}))])
    state = DiscoveryState()
    snap = Snapshot("e", 1, (), (), tuple(t.authorization_policies.values()),
                    tuple(t.peer_authentications.values()))
    import json

    change = state.apply_line(json.dumps(snap.to_wire()).encode())[1]
    assert change.policies == {"default/deny-admin", "default/pa"}
    assert state.authorization_policies == t.authorization_policies
    delta = diff_to_delta("e", 2, {}, {}, {}, {}, t.authorization_policies, {},
                          t.peer_authentications, t.peer_authentications)
    assert delta is not None and delta.remove_authorization_policies == ("default/deny-admin",)
    change = state.apply_line(json.dumps(delta.to_wire()).encode())[1]
    assert change.policies == {"default/deny-admin"} and not state.authorization_policies


def test_l7_rules_on_non_http_ports_are_reported_as_warnings() -> None:
    from .helpers import namespace, pod, service

    objects = [
        namespace("default", {"nodemesh.io/dataplane-mode": "enabled"}),
        pod(),
        service(ports=[{"port": 5432, "targetPort": 5432, "name": "tcp-db"},
                       {"port": 80, "targetPort": 8080, "name": "http"}]),
        authz({"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
              name="allow-get"),
        authz({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"],
                                                                   "paths": ["/a"]}}]}]},
              name="deny-http-only"),
    ]
    t = translate([SourceObject("p.yaml", i, o) for i, o in enumerate(objects)])
    assert t.errors == ()
    assert [(w.object, w.field) for w in t.warnings] == [
        ("AuthorizationPolicy default/allow-get", "spec.rules[0].to[0].operation")]
    assert "5432" in t.warnings[0].message and "never matches" in t.warnings[0].message
    assert "default/allow-get" in t.authorization_policies  # a warning keeps the policy


def test_root_namespace_is_configurable_and_reaches_nodes() -> None:
    import json

    from controller.cli import parse_config
    from controller.discovery import DiscoveryHub
    from controller.metrics import Metrics

    config = parse_config(["--config-dir", "c", "--state-dir", "s", "--node-tokens-dir", "t",
                           "--root-namespace", "mesh-root"], env={})
    assert config.root_namespace == "mesh-root"
    hub = DiscoveryHub(Metrics(), root_namespace=config.root_namespace)
    state = DiscoveryState()
    state.apply_line(json.dumps(hub.snapshot().to_wire()).encode())
    assert state.root_namespace == "mesh-root"
    with pytest.raises(SystemExit):
        parse_config(["--config-dir", "c", "--state-dir", "s", "--node-tokens-dir", "t",
                      "--root-namespace", "Not_A_Label"], env={})
