"""meshapi.policy: spec validation and the pure evaluation, table-driven (issue 4)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshapi.errors import WireError
from meshapi.ids import SpiffeId
from meshapi.policy import (
    Action,
    Attributes,
    AuthorizationPolicy,
    HttpRequest,
    MtlsMode,
    PeerAuthentication,
    evaluate,
    match_string,
    resolve_mtls,
)

CLIENT = SpiffeId("cluster.local", "default", "client")
OTHER = SpiffeId("cluster.local", "other", "bot")
ROOT = "nodemesh-system"


def pol(
    spec: dict[str, Any], *, ns: str = "default", name: str = "p", dry: bool = False
) -> AuthorizationPolicy:
    return AuthorizationPolicy.from_spec(ns, name, spec, dry_run=dry)


def allow(*rules: dict[str, Any], **kw: Any) -> AuthorizationPolicy:
    return pol({"action": "ALLOW", "rules": list(rules)}, **kw)


def deny(*rules: dict[str, Any], **kw: Any) -> AuthorizationPolicy:
    return pol({"action": "DENY", "rules": list(rules)}, **kw)


def src(**fields: Any) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def op(**fields: Any) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> dict[
    str, Any
]:
    cond: dict[str, Any] = {"key": key}
    if values is not None:
        cond["values"] = values
    if not_values is not None:
        cond["notValues"] = not_values
    return {"when": [cond]}


@dataclass
class Req:
    peer: SpiffeId | None = CLIENT
    src: str = "10.78.1.2"
    dst: str = "10.78.2.2"
    port: int = 8080
    http: bool = True
    method: str | None = "GET"
    path: str = "/"
    host: str = "server.default"
    headers: tuple[tuple[str, str], ...] = ()

    def attributes(self) -> Attributes:
        request = (
            HttpRequest(self.method, self.path, self.host, self.headers)
            if self.method is not None and self.http
            else None
        )
        return Attributes(
            ipaddress.IPv4Address(self.src),
            ipaddress.IPv4Address(self.dst),
            self.port,
            peer=self.peer,
            http_port=self.http,
            request=request,
        )


@dataclass
class Case:
    id: str
    policies: list[AuthorizationPolicy]
    req: Req = field(default_factory=Req)
    allowed: bool = True
    deciding: str | None = None  # "ns/name[i]"
    ns: str = "default"
    labels: dict[str, str] = field(default_factory=lambda: {"app": "server"})
    warning: bool = False
    audits: int = 0
    dry_allowed: bool | None = None
    needs_request: bool = False


L4 = Req(method=None, http=False)  # a non-HTTP port
CONN = Req(method=None, http=True)  # connection stage on an HTTP port

CASES = [
    # -- defaults ---------------------------------------------------------------------------
    Case("no policies", []),
    Case("no policies plaintext", [], Req(peer=None)),
    Case("allow with no rules allows nothing", [pol({"action": "ALLOW"})], allowed=False),
    Case("allow default action", [pol({"rules": [{}]})], deciding="default/p[0]"),
    Case("empty rule matches all", [allow({})], deciding="default/p[0]"),
    Case("deny with no rules matches nothing", [pol({"action": "DENY"})]),
    Case("deny empty rule denies all", [deny({})], allowed=False, deciding="default/p[0]"),
    Case("empty spec is allow nothing", [pol({})], allowed=False),
    # -- principals --------------------------------------------------------------------------
    Case("principal exact", [allow(src(principals=["cluster.local/ns/default/sa/client"]))]),
    Case("principal mismatch", [allow(src(principals=["cluster.local/ns/default/sa/x"]))],
         allowed=False),
    Case("principal prefix", [allow(src(principals=["cluster.local/ns/default/*"]))]),
    Case("principal suffix", [allow(src(principals=["*/sa/client"]))]),
    Case("principal star", [allow(src(principals=["*"]))]),
    Case("principal star no peer", [allow(src(principals=["*"]))], Req(peer=None),
         allowed=False),
    Case("principal list any", [allow(src(principals=["a.b/ns/x/sa/y",
                                                      "cluster.local/ns/default/sa/client"]))]),
    Case("principal other peer", [allow(src(principals=["cluster.local/ns/default/sa/client"]))],
         Req(peer=OTHER), allowed=False),
    Case("notPrincipals excludes", [allow(src(notPrincipals=["*/sa/client"]))], allowed=False),
    Case("notPrincipals others", [allow(src(notPrincipals=["*/sa/client"]))], Req(peer=OTHER)),
    Case("notPrincipals plaintext matches", [allow(src(notPrincipals=["*"]))], Req(peer=None)),
    Case("deny notPrincipals plaintext denies", [deny(src(notPrincipals=["*"]))],
         Req(peer=None), allowed=False, deciding="default/p[0]"),
    Case("deny notPrincipals mtls passes", [deny(src(notPrincipals=["*"]))]),
    # -- namespaces --------------------------------------------------------------------------
    Case("namespace exact", [allow(src(namespaces=["default"]))]),
    Case("namespace mismatch", [allow(src(namespaces=["prod"]))], allowed=False),
    Case("namespace prefix", [allow(src(namespaces=["def*"]))]),
    Case("namespace suffix", [allow(src(namespaces=["*ult"]))]),
    Case("namespace plaintext", [allow(src(namespaces=["*"]))], Req(peer=None), allowed=False),
    Case("notNamespaces excludes", [allow(src(notNamespaces=["default"]))], allowed=False),
    Case("notNamespaces others", [allow(src(notNamespaces=["default"]))], Req(peer=OTHER)),
    Case("deny namespace other", [deny(src(namespaces=["other"]))], Req(peer=OTHER),
         allowed=False, deciding="default/p[0]"),
    Case("deny namespace not us", [deny(src(namespaces=["other"]))]),
    # -- ip blocks ---------------------------------------------------------------------------
    Case("ipBlocks cidr", [allow(src(ipBlocks=["10.78.1.0/24"]))]),
    Case("ipBlocks single", [allow(src(ipBlocks=["10.78.1.2"]))]),
    Case("ipBlocks miss", [allow(src(ipBlocks=["10.78.2.0/24"]))], allowed=False),
    Case("notIpBlocks excludes", [allow(src(notIpBlocks=["10.78.0.0/16"]))], allowed=False),
    Case("notIpBlocks others", [allow(src(notIpBlocks=["10.99.0.0/16"]))]),
    Case("ipBlocks plaintext", [allow(src(ipBlocks=["10.78.1.0/24"]))], Req(peer=None)),
    Case("deny ipBlocks", [deny(src(ipBlocks=["10.78.1.0/24"]))], allowed=False,
         deciding="default/p[0]"),
    # -- source fields ANDed, sources ORed --------------------------------------------------
    Case("source fields and: both", [allow(src(namespaces=["default"],
                                               ipBlocks=["10.78.1.0/24"]))]),
    Case("source fields and: one fails", [allow(src(namespaces=["default"],
                                                    ipBlocks=["10.0.0.0/24"]))], allowed=False),
    Case("sources or", [allow({"from": [{"source": {"namespaces": ["x"]}},
                                        {"source": {"ipBlocks": ["10.78.1.2/32"]}}]})]),
    # -- ports -------------------------------------------------------------------------------
    Case("ports match", [allow(op(ports=["8080"]))], L4),
    Case("ports int", [allow(op(ports=[8080]))], L4),
    Case("ports miss", [allow(op(ports=["9090"]))], L4, allowed=False),
    Case("notPorts excludes", [allow(op(notPorts=["8080"]))], L4, allowed=False),
    Case("notPorts others", [allow(op(notPorts=["9090"]))], L4),
    Case("deny port", [deny(op(ports=["8080"]))], L4, allowed=False, deciding="default/p[0]"),
    Case("deny other port", [deny(op(ports=["9090"]))], L4),
    # -- methods -----------------------------------------------------------------------------
    Case("method exact", [allow(op(methods=["GET"]))]),
    Case("method miss", [allow(op(methods=["POST"]))], allowed=False),
    Case("method prefix", [allow(op(methods=["G*"]))]),
    Case("notMethods excludes", [allow(op(notMethods=["GET"]))], allowed=False),
    Case("notMethods others", [allow(op(notMethods=["DELETE"]))]),
    Case("deny method", [deny(op(methods=["DELETE"]))], Req(method="DELETE"), allowed=False,
         deciding="default/p[0]"),
    Case("deny method other", [deny(op(methods=["DELETE"]))]),
    # -- paths -------------------------------------------------------------------------------
    Case("path exact", [allow(op(paths=["/"]))]),
    Case("path prefix", [allow(op(paths=["/api/*"]))], Req(path="/api/v1")),
    Case("path prefix miss", [allow(op(paths=["/api/*"]))], Req(path="/admin"), allowed=False),
    Case("path suffix", [allow(op(paths=["*.json"]))], Req(path="/x/data.json")),
    Case("path star", [allow(op(paths=["*"]))], Req(path="/anything")),
    Case("notPaths excludes", [allow(op(notPaths=["/admin*"]))], Req(path="/admin/x"),
         allowed=False),
    Case("notPaths others", [allow(op(notPaths=["/admin*"]))], Req(path="/public")),
    Case("deny path", [deny(op(paths=["/admin"]))], Req(path="/admin"), allowed=False,
         deciding="default/p[0]"),
    Case("deny path other", [deny(op(paths=["/admin"]))], Req(path="/ok")),
    # -- hosts -------------------------------------------------------------------------------
    Case("host exact", [allow(op(hosts=["server.default"]))]),
    Case("host case-insensitive", [allow(op(hosts=["SERVER.default"]))]),
    Case("host with port", [allow(op(hosts=["server.default"]))],
         Req(host="server.default:80")),
    Case("host suffix", [allow(op(hosts=["*.default"]))]),
    Case("host miss", [allow(op(hosts=["other"]))], allowed=False),
    Case("notHosts excludes", [allow(op(notHosts=["server*"]))], allowed=False),
    Case("notHosts others", [allow(op(notHosts=["evil*"]))]),
    # -- operation fields ANDed, operations ORed -------------------------------------------
    Case("op and", [allow(op(methods=["GET"], paths=["/"]))]),
    Case("op and fails", [allow(op(methods=["GET"], paths=["/x"]))], allowed=False),
    Case("ops or", [allow({"to": [{"operation": {"paths": ["/x"]}},
                                  {"operation": {"methods": ["GET"]}}]})]),
    Case("from and to", [allow({**src(namespaces=["default"]), **op(methods=["GET"])})]),
    Case("from and to fails", [allow({**src(namespaces=["x"]), **op(methods=["GET"])})],
         allowed=False),
    # -- when --------------------------------------------------------------------------------
    Case("when source.ip", [allow(when("source.ip", ["10.78.1.0/24"]))]),
    Case("when source.ip miss", [allow(when("source.ip", ["10.0.0.0/8", "10.78.9.0/24"]))],
         Req(src="192.168.0.1"), allowed=False),
    Case("when source.ip notValues", [allow(when("source.ip", not_values=["10.78.1.2"]))],
         allowed=False),
    Case("when source.namespace", [allow(when("source.namespace", ["default"]))]),
    Case("when source.namespace miss", [allow(when("source.namespace", ["x"]))], allowed=False),
    Case("when source.namespace plaintext", [allow(when("source.namespace", ["*"]))],
         Req(peer=None), allowed=False),
    Case("when source.principal", [allow(when("source.principal",
                                              ["cluster.local/ns/default/sa/client"]))]),
    Case("when source.principal spiffe form", [allow(when(
        "source.principal", ["spiffe://cluster.local/ns/default/sa/client"]))]),
    Case("when source.principal not", [allow(when("source.principal", not_values=["*client"]))],
         allowed=False),
    Case("when destination.ip", [allow(when("destination.ip", ["10.78.2.2"]))]),
    Case("when destination.ip miss", [allow(when("destination.ip", ["10.78.2.3"]))],
         allowed=False),
    Case("when destination.port", [allow(when("destination.port", ["8080"]))]),
    Case("when destination.port not", [allow(when("destination.port", not_values=["8080"]))],
         allowed=False),
    Case("when header", [allow(when("request.headers[X-Env]", ["prod"]))],
         Req(headers=(("x-env", "prod"),))),
    Case("when header prefix", [allow(when("request.headers[x-env]", ["pr*"]))],
         Req(headers=(("x-env", "prod"),))),
    Case("when header missing", [allow(when("request.headers[x-env]", ["prod"]))],
         allowed=False),
    Case("when header notValues", [allow(when("request.headers[x-env]", not_values=["dev"]))],
         Req(headers=(("x-env", "dev"),)), allowed=False),
    Case("when header notValues absent", [allow(when("request.headers[x-env]",
                                                     not_values=["dev"]))]),
    Case("when and", [allow({"when": [{"key": "source.namespace", "values": ["default"]},
                                      {"key": "destination.port", "values": ["9"]}]})],
         allowed=False),
    Case("deny when header", [deny(when("request.headers[x-evil]", ["*"]))],
         Req(headers=(("x-evil", "1"),)), allowed=False, deciding="default/p[0]"),
    # -- DENY over ALLOW, ordering ---------------------------------------------------------
    Case("deny over allow", [allow({}, name="a"), deny({}, name="d")], allowed=False,
         deciding="default/d[0]"),
    Case("allow when deny misses", [allow({}, name="a"), deny(src(namespaces=["x"]),
                                                               name="d")],
         deciding="default/a[0]"),
    Case("second allow rule", [allow(src(namespaces=["x"]), src(namespaces=["default"]))],
         deciding="default/p[1]"),
    Case("one of two allow policies", [allow(src(namespaces=["x"]), name="a"),
                                       allow({}, name="b")], deciding="default/b[0]"),
    Case("deny plus unmatched allow", [allow(src(namespaces=["x"]), name="a"),
                                       deny(src(namespaces=["y"]), name="d")], allowed=False),
    # -- selectors and namespaces ----------------------------------------------------------
    Case("selector matches", [pol({"selector": {"matchLabels": {"app": "server"}},
                                   "action": "DENY", "rules": [{}]})], allowed=False),
    Case("selector other app", [pol({"selector": {"matchLabels": {"app": "db"}},
                                     "action": "DENY", "rules": [{}]})]),
    Case("selector multi label miss", [pol({"selector": {"matchLabels": {"app": "server",
                                                                         "v": "2"}},
                                            "action": "DENY", "rules": [{}]})]),
    Case("other namespace policy ignored", [deny({}, ns="prod")]),
    Case("root namespace mesh-wide", [deny({}, ns=ROOT)], allowed=False,
         deciding=f"{ROOT}/p[0]"),
    Case("root namespace with selector", [pol({"selector": {"matchLabels": {"app": "server"}},
                                               "action": "DENY", "rules": [{}]}, ns=ROOT)],
         allowed=False),
    Case("root namespace selector miss", [pol({"selector": {"matchLabels": {"app": "x"}},
                                               "action": "DENY", "rules": [{}]}, ns=ROOT)]),
    Case("root allow plus ns allow", [allow(src(namespaces=["x"]), ns=ROOT, name="r"),
                                      allow({}, name="n")], deciding="default/n[0]"),
    Case("root allow restricts", [allow(src(namespaces=["x"]), ns=ROOT)], allowed=False),
    Case("workload in other ns", [deny({})], ns="prod"),
    # -- AUDIT -------------------------------------------------------------------------------
    Case("audit not enforced", [pol({"action": "AUDIT", "rules": [{}]})], audits=1),
    Case("audit no match", [pol({"action": "AUDIT", "rules": [src(namespaces=["x"])]})]),
    Case("audit two rules", [pol({"action": "AUDIT", "rules": [{}, op(methods=["GET"])]})],
         audits=2),
    Case("audit with deny", [pol({"action": "AUDIT", "rules": [{}]}, name="a"),
                             deny({}, name="d")], allowed=False, audits=1),
    Case("audit does not count as allow", [pol({"action": "AUDIT", "rules": [{}]}, name="a"),
                                           allow(src(namespaces=["x"]), name="b")],
         allowed=False, audits=1),
    # -- dry-run -----------------------------------------------------------------------------
    Case("dry-run deny not enforced", [deny({}, dry=True)], dry_allowed=False),
    Case("dry-run allow restricts only in shadow", [allow(src(namespaces=["x"]), dry=True)],
         dry_allowed=False),
    Case("dry-run allow matching", [allow({}, dry=True)], dry_allowed=True),
    Case("dry-run with enforced deny", [deny({}, name="d"), allow({}, name="s", dry=True)],
         allowed=False, dry_allowed=False),
    Case("dry-run deny no match", [deny(src(namespaces=["x"]), dry=True)], dry_allowed=True),
    Case("dry-run in root", [deny({}, ns=ROOT, dry=True)], dry_allowed=False),
    # -- fail closed on non-HTTP ports ----------------------------------------------------
    Case("allow L7 on tcp never matches", [allow(op(methods=["GET"]))], L4, allowed=False,
         warning=True),
    Case("allow L7 header on tcp never matches", [allow(when("request.headers[a]", ["b"]))],
         L4, allowed=False, warning=True),
    Case("allow L7 plus L4 rule", [allow(op(paths=["/x"]), src(namespaces=["default"]))], L4,
         deciding="default/p[1]", warning=True),
    Case("deny L7 on tcp denies at L4", [deny(op(paths=["/admin"]))], L4, allowed=False,
         deciding="default/p[0]", warning=True),
    Case("deny L7 on tcp keeps L4 part", [deny({**op(paths=["/a"]), **src(namespaces=["x"])})],
         L4, warning=True),
    Case("deny L7 host on tcp", [deny(op(hosts=["*"]))], L4, allowed=False, warning=True),
    # -- connection stage on HTTP ports --------------------------------------------------
    Case("conn: L7 deny waits for the request", [deny(op(paths=["/admin"]))], CONN,
         needs_request=True),
    Case("conn: L7 allow lets the connection in", [allow(op(paths=["/ok"]))], CONN,
         needs_request=True),
    Case("conn: L7 allow with wrong source", [allow({**op(paths=["/ok"]),
                                                     **src(namespaces=["x"])})], CONN,
         allowed=False),
    Case("conn: L4 deny on http port", [deny(src(namespaces=["default"]))], CONN,
         allowed=False),
    Case("conn: L4-only policies decide now", [allow(src(namespaces=["default"]))], CONN),
    Case("request: L7 deny", [deny(op(paths=["/admin"]))], Req(path="/admin"), allowed=False),
    Case("request: L7 deny other path on same conn", [deny(op(paths=["/admin"]))],
         Req(path="/ok")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_evaluate(case: Case) -> None:
    decision = evaluate(
        case.policies,
        namespace=case.ns,
        labels=case.labels,
        attributes=case.req.attributes(),
        root_namespace=ROOT,
    )
    assert decision.allowed is case.allowed, decision.reason
    if case.deciding is not None:
        assert decision.deciding is not None
        assert f"{decision.deciding.policy}[{decision.deciding.rule}]" == case.deciding
    assert bool(decision.warnings) is case.warning, decision.warnings
    assert len(decision.audits) == case.audits
    if case.dry_allowed is None:
        assert decision.dry_run is None
    else:
        assert decision.dry_run is not None and decision.dry_run.allowed is case.dry_allowed
    assert decision.needs_request is case.needs_request


def test_at_least_a_hundred_cases() -> None:
    assert len(CASES) >= 100


@pytest.mark.parametrize(
    ("pattern", "value", "ok"),
    [
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("ab*", "abcd", True),
        ("*cd", "abcd", True),
        ("*", "x", True),
        ("*", "", False),
        ("*cd", "abce", False),
    ],
)
def test_match_string(pattern: str, value: str, ok: bool) -> None:
    assert match_string(pattern, value) is ok


BAD_SPECS = [
    ({"action": "REJECT"}, "spec.action", "unknown action"),
    ({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300/24"]}}]}]},
     "spec.rules[0].from[0].source.ipBlocks[0]", "bad CIDR"),
    ({"rules": [{"from": [{"source": {"principals": ["default/client"]}}]}]},
     "spec.rules[0].from[0].source.principals[0]", "malformed principal"),
    ({"rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b"]}}]}]},
     "spec.rules[0].from[0].source.principals[0]", "malformed principal"),
    ({"rules": [{"from": [{"source": {"namespace": ["a"]}}]}]},
     "spec.rules[0].from[0].source.namespace", "unknown field"),
    ({"rulez": []}, "spec.rulez", "unknown field"),
    ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]},
     "spec.rules[0].to[0].operation.ports[0]", "not a port"),
    ({"rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]},
     "spec.rules[0].when[0].key", "unsupported key"),
    ({"rules": [{"when": [{"key": "source.ip"}]}]}, "spec.rules[0].when[0]", "values"),
    ({"rules": [{"when": [{"key": "source.ip", "values": ["nope"]}]}]},
     "spec.rules[0].when[0].values[0]", "bad CIDR"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a*b*"]}}]}]},
     "spec.rules[0].to[0].operation.paths[0]", "'*'"),
    ({"rules": [{"from": [{"source": {"principals": []}}]}]},
     "spec.rules[0].from[0].source.principals", "must not be empty"),
    ({"selector": {"labels": {"a": "b"}}}, "spec.selector.labels", "unknown field"),
    ({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
     "spec.rules[0].from[0].source.requestPrincipals", "not supported"),
]


@pytest.mark.parametrize(("spec", "path", "text"), BAD_SPECS, ids=[b[1] + b[2] for b in BAD_SPECS])
def test_bad_authorization_specs(spec: dict[str, Any], path: str, text: str) -> None:
    with pytest.raises(WireError) as err:
        AuthorizationPolicy.from_spec("default", "p", spec)
    assert err.value.path == path
    assert text in err.value.message


def test_wire_round_trip() -> None:
    p = pol({"selector": {"matchLabels": {"app": "server"}}, "action": "DENY",
             "rules": [{**src(namespaces=["x"]), **op(paths=["/a"])}]}, dry=True)
    back = AuthorizationPolicy.from_wire(p.to_wire())
    assert back == p and back.dry_run and back.action is Action.DENY


def pa(spec: dict[str, Any], ns: str = "default", name: str = "pa") -> PeerAuthentication:
    return PeerAuthentication.from_spec(ns, name, spec)


MTLS_CASES = [
    ("default strict", [], MtlsMode.STRICT),
    ("mesh-wide permissive", [pa({"mtls": {"mode": "PERMISSIVE"}}, ns=ROOT)], MtlsMode.PERMISSIVE),
    ("namespace over mesh", [pa({"mtls": {"mode": "PERMISSIVE"}}, ns=ROOT),
                             pa({"mtls": {"mode": "STRICT"}})], MtlsMode.STRICT),
    ("selector over namespace", [pa({"mtls": {"mode": "STRICT"}}, name="a"),
                                 pa({"selector": {"matchLabels": {"app": "server"}},
                                     "mtls": {"mode": "DISABLE"}}, name="b")], MtlsMode.DISABLE),
    ("selector miss", [pa({"selector": {"matchLabels": {"app": "x"}},
                           "mtls": {"mode": "DISABLE"}})], MtlsMode.STRICT),
    ("port level", [pa({"selector": {"matchLabels": {"app": "server"}},
                        "mtls": {"mode": "STRICT"},
                        "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}})],
     MtlsMode.PERMISSIVE),
    ("port level other port", [pa({"selector": {"matchLabels": {"app": "server"}},
                                   "mtls": {"mode": "STRICT"},
                                   "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}})],
     MtlsMode.STRICT),
    ("unset inherits", [pa({"mtls": {"mode": "PERMISSIVE"}}, name="a"),
                        pa({"selector": {"matchLabels": {"app": "server"}}}, name="b")],
     MtlsMode.PERMISSIVE),
    ("other namespace ignored", [pa({"mtls": {"mode": "PERMISSIVE"}}, ns="prod")],
     MtlsMode.STRICT),
]


@pytest.mark.parametrize(("id_", "items", "mode"), MTLS_CASES, ids=[c[0] for c in MTLS_CASES])
def test_resolve_mtls(id_: str, items: list[PeerAuthentication], mode: MtlsMode) -> None:
    got = resolve_mtls(items, namespace="default", labels={"app": "server"}, port=8080,
                       root_namespace=ROOT)
    assert got is mode


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"mtls": {"mode": "SOMETIMES"}}, "spec.mtls.mode"),
        ({"portLevelMtls": {"80": {"mode": "STRICT"}}}, "spec.portLevelMtls"),
        ({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"x": {"mode": "STRICT"}}},
         "spec.portLevelMtls.x"),
        ({"mtls": {"mode": "STRICT", "extra": 1}}, "spec.mtls.extra"),
    ],
)
def test_bad_peer_authentication(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(WireError) as err:
        pa(spec)
    assert err.value.path == path
