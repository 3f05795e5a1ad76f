"""meshctl policy validate (every error, with file, line, object, field) and explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshapi.discovery import Snapshot
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Endpoint, Service, ServicePort, Workload
from meshapi.policy import AuthorizationPolicy
from meshctl import policy
from meshctl.cli import main

BAD = """\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/8", "10.1.2.300/24"]
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: default}
spec:
  action: BLOCK
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: default}
spec:
  rules:
  - from:
    - source:
        principals: ["client"]
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: default}
spec:
  rules:
  - to:
    - operation:
        verbs: [GET]
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: default}
spec: {}
"""


def test_validate_lists_every_error_with_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(BAD)
    problems = policy.validate([str(f)])
    got = [(p.line, p.object, p.field) for p in problems]
    assert got == [
        (9, "AuthorizationPolicy default/a", "spec.rules[0].from[0].source.ipBlocks[1]"),
        (15, "AuthorizationPolicy default/b", "spec.action"),
        (24, "AuthorizationPolicy default/c", "spec.rules[0].from[0].source.principals[0]"),
        (33, "AuthorizationPolicy default/d", "spec.rules[0].to[0].operation.verbs"),
    ]
    assert "bad CIDR" in problems[0].message
    assert "unknown action" in problems[1].message
    assert "malformed principal" in problems[2].message
    assert "unknown field" in problems[3].message
    assert str(problems[0]).startswith(f"{f}:9: AuthorizationPolicy default/a: spec.rules")


def test_validate_cli_exit_codes(tmp_path: Path, capsys: object) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    good = tmp_path / "good.yaml"
    good.write_text(BAD.split("---\n")[-1])
    assert main(["policy", "validate", str(good)]) == 0
    assert main(["policy", "validate", str(good), str(bad)]) == 1


def test_malformed_yaml_has_a_line(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("a: [1,\nb: 2\n")
    (p,) = policy.validate([str(f)])
    assert p.line is not None and "malformed YAML" in p.message


def _snapshot(*policies: AuthorizationPolicy) -> Snapshot:
    def w(name: str, ns: str, sa: str, ip: str, labels: tuple[tuple[str, str], ...] = ()
          ) -> Workload:
        return Workload(PodUid(name), name, ns, sa, SpiffeId("cluster.local", ns, sa),
                        NodeName("node-1"), __import__("ipaddress").IPv4Address(ip), True, labels)

    server = w("server-1", "default", "server", "10.78.2.2", (("app", "server"),))
    client = w("client", "default", "client", "10.78.1.2")
    svc = Service("default", "server", None, (ServicePort(80, 8080, "http"),),
                  (Endpoint(server.uid, server.ip),))
    return Snapshot("e", 1, (server, client), (svc,), policies)


def test_explain_uses_the_ztunnel_evaluation() -> None:
    deny = AuthorizationPolicy.from_spec("default", "no-admin", {
        "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
    snap = _snapshot(deny)
    e = policy.explain(snap, source="default/client", to="server-1", path="/admin/x")
    assert not e.decision.allowed and e.decision.deciding is not None
    assert e.decision.deciding.policy == "default/no-admin"
    assert "DENY" in policy.render(e) and "rules[0]" in policy.render(e)
    e = policy.explain(snap, source="10.78.1.2", to="default/server-1:8080", path="/ok")
    assert e.decision.allowed and e.attributes.principal == "cluster.local/ns/default/sa/client"


def test_explain_normalizes_the_path_as_the_ztunnel_does() -> None:
    import dataclasses

    import pytest

    from meshapi.httppath import PathNormalization
    from meshctl.errors import MeshctlError

    deny = AuthorizationPolicy.from_spec("default", "no-admin", {
        "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]})
    snap = _snapshot(deny)
    for path in ("/x/../admin/y", "//admin/y", "/%61dmin/y?q=1"):
        e = policy.explain(snap, source="default/client", to="server-1", path=path)
        assert not e.decision.allowed, path
        assert e.attributes.request is not None and e.attributes.request.path == "/admin/y"
    with pytest.raises(MeshctlError, match="refuses this path with 400"):
        policy.explain(snap, source="default/client", to="server-1", path="/admin%2Fy")
    with pytest.raises(MeshctlError, match="case-sensitive"):
        policy.explain(snap, source="default/client", to="server-1", method="get", path="/")
    raw = dataclasses.replace(snap, path_normalization=PathNormalization.NONE)
    e = policy.explain(raw, source="default/client", to="server-1", path="//admin/y")
    assert e.decision.allowed  # NONE: matched as sent


def test_validate_live_reports_l7_fields_that_cannot_apply(tmp_path: Path) -> None:
    text = """\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - to:
    - operation:
        ports: ["9000"]
        methods: [GET]
"""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    assert policy.validate([str(f)]) == []
    (p,) = policy.validate([str(f)], _snapshot())
    assert (p.line, p.field) == (8, "spec.rules[0].to[0].operation")
    assert "non-HTTP port(s) default/server-1:9000" in p.message


def test_validate_reports_every_error_of_one_object(tmp_path: Path) -> None:
    text = """\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: many, namespace: default}
spec:
  action: BLOCK
  rules:
  - from:
    - source:
        ipBlocks: ["1.2.3.4/40"]
        principals: ["bob"]
    to:
    - operation:
        verbs: [GET]
"""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    got = [(p.line, p.field) for p in policy.validate([str(f)])]
    assert got == [
        (5, "spec.action"),
        (9, "spec.rules[0].from[0].source.ipBlocks[0]"),
        (10, "spec.rules[0].from[0].source.principals[0]"),
        (13, "spec.rules[0].to[0].operation.verbs"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a:\n  b: " + "[" * 2000 + "]" * 2000 + "\n", 2, "nest"),  # was RecursionError
        ("apiVersion: security.nodemesh.io/v1\nkind: AuthorizationPolicy\n"
         "metadata: {name: p, namespace: default}\nspec: {action: !!bool maybe}\n", 4,
         "cannot read bool"),  # was KeyError
    ],
)
def test_validate_reports_hostile_yaml_with_its_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    (p,) = policy.validate([str(f)])
    assert p.file == str(f) and p.line == line and fragment in p.message
