"""The CRDs' admission rules (structural schema + CEL, see helpers.Admission) against the example
policies and a table of invalid objects, and their agreement with the controller's own parser
(controller.translate.parse_object).

Where the two may differ on purpose, the table says so: bounds that exist only at admission
(maxItems/maxLength, to keep objects and CEL costs small) and the dry-run annotation, which a
CRD schema cannot see (metadata is not validated by the schema) and only the controller checks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from controller.translate import ObjectError, SourceObject, parse_object
from tests.unit.manifests.helpers import EXAMPLES, Admission, crd_for, load_docs

AUTHZ = "AuthorizationPolicy"
PEER = "PeerAuthentication"


@pytest.fixture(scope="module")
def admission() -> dict[str, Admission]:
    return {kind: Admission(crd_for(kind)) for kind in (AUTHZ, PEER)}


def parser_error(obj: dict[str, Any]) -> str | None:
    try:
        parse_object(SourceObject("test.yaml", 0, obj))
    except ObjectError as exc:
        return str(exc.issue)
    return None


def example_docs() -> list[Any]:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, "examples/policies/*.yaml: no example policies"
    return [pytest.param(d.body, id=f"{f.name}[{d.index}]") for f in files for d in load_docs(f)]


@pytest.mark.parametrize("obj", example_docs())
def test_every_example_is_admitted_and_parsed(
    admission: dict[str, Admission], obj: dict[str, Any]
) -> None:
    assert admission[obj["kind"]].errors(obj) == []
    assert parser_error(obj) is None


def test_examples_cover_both_kinds_and_the_readme_example() -> None:
    docs = [d.body for f in sorted(EXAMPLES.glob("*.yaml")) for d in load_docs(f)]
    assert {d["kind"] for d in docs} == {AUTHZ, PEER}
    names = {d["metadata"]["name"] for d in docs}
    # README.md "Policy" shows these two
    assert {"server-allow-client", "default"} <= names


# ---- the table --------------------------------------------------------------------------------


def authz(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.nodemesh.io/v1",
        "kind": AUTHZ,
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec,
    }


def peer(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.nodemesh.io/v1",
        "kind": PEER,
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec,
    }


def src(**source: Any) -> dict[str, Any]:
    return authz(action="ALLOW", rules=[{"from": [{"source": source}]}])


def op(**operation: Any) -> dict[str, Any]:
    return authz(action="ALLOW", rules=[{"to": [{"operation": operation}]}])


def when(**condition: Any) -> dict[str, Any]:
    return authz(action="ALLOW", rules=[{"when": [condition]}])


def edit(obj: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    change(out)
    return out


SELECTED = {"matchLabels": {"app": "server"}}
P = "cluster.local/ns/default/sa/client"


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    #: a fragment of the admission error (None: admitted)
    admission: str | None
    #: whether the controller's parser accepts it; None: the same verdict as admission
    parser_accepts: bool | None = None
    #: why the two verdicts differ (required when they do)
    why: str = ""


VALID = [
    Case("rule {} matches everything", authz(action="DENY", rules=[{}]), None),
    Case("no spec at all", {k: v for k, v in authz().items() if k != "spec"}, None),
    Case("ports as numbers and strings", op(ports=[8080, "9090"], notPorts=["1"]), None),
    Case("empty from item", authz(rules=[{"from": [{}]}]), None),
    Case("star patterns", src(principals=["*", "cluster.local/*", "*/sa/client"]), None),
    Case("ip and CIDR", src(ipBlocks=["10.1.2.3", "10.0.0.0/8"], notIpBlocks=["0.0.0.0/0"]),
         None),
    Case("header condition", when(key="request.headers[x-env]", notValues=["dev*"]), None),
    Case("principal condition, both forms",
         when(key="source.principal", values=[P, f"spiffe://{P}", "*"]), None),
    Case("port condition", when(key="destination.port", values=["8080", "65535"]), None),
    Case("peer: port level with selector",
         peer(selector=SELECTED, portLevelMtls={"8080": {"mode": "DISABLE"}}), None),
    Case("peer: empty spec", peer(), None),
]

INVALID = [
    # wrong enum
    Case("unknown action", authz(action="BLOCK"), "action"),
    Case("unknown mtls mode", peer(mtls={"mode": "ON"}), "mode"),
    Case("unknown port-level mode",
         peer(selector=SELECTED, portLevelMtls={"80": {"mode": "strict"}}), "mode"),
    # missing required
    Case("condition without key", when(values=["x"]), "'key' is a required property"),
    Case("condition without values", when(key="source.namespace"),
         "one of values or notValues is required"),
    # extra fields
    Case("unknown spec field (typo)", authz(rule=[{}]), "'rule' was unexpected"),
    Case("provider (unsupported)", authz(action="ALLOW", provider={"name": "x"}),
         "'provider' was unexpected"),
    Case("targetRef (unsupported)", authz(targetRef={"kind": "Service", "name": "x"}),
         "'targetRef' was unexpected"),
    Case("requestPrincipals (unsupported)", src(requestPrincipals=["*"]),
         "'requestPrincipals' was unexpected"),
    Case("unknown operation field", op(method=["GET"]), "'method' was unexpected"),
    Case("unknown mtls field", peer(mtls={"mode": "STRICT", "level": 1}),
         "'level' was unexpected"),
    Case("unknown top-level field", edit(authz(), lambda o: o.update(specs={})),
         "'specs' was unexpected"),
    # bad types
    Case("rules not a list", authz(rules={"from": []}), "is not of type 'array'"),
    Case("action not a string", authz(action=1), "is not of type 'string'"),
    Case("boolean port", op(ports=[True]), "is not valid under any of the given schemas"),
    Case("label value not a string", authz(selector={"matchLabels": {"app": 1}}),
         "is not of type 'string'"),
    Case("principals a string", src(principals=P), "is not of type 'array'"),
    # patterns, empties, ranges
    Case("empty principals", src(principals=[]), "should be non-empty"),
    Case("empty method", op(methods=[""]), "does not match"),
    Case("star in the middle", op(paths=["/a*b"]), "does not match"),
    Case("two stars", op(hosts=["*.example.*"]), "does not match"),
    Case("principal with spiffe://", src(principals=[f"spiffe://{P}"]), "does not match"),
    Case("principal pattern with spiffe://", src(notPrincipals=["spiffe://cluster.local/*"]),
         "without spiffe://"),
    Case("malformed principal", src(principals=["cluster.local/ns/default"]), "does not match"),
    Case("principal namespace not a DNS label", src(principals=["td/ns/Default/sa/x"]),
         "does not match"),
    Case("bad CIDR", src(ipBlocks=["10.0.0.300/8"]), "does not match"),
    Case("pattern as ipBlock", src(ipBlocks=["10.*"]), "does not match"),
    Case("port 0", op(ports=["0"]), "does not match"),
    Case("port 65536", op(notPorts=[65536]), "65536 is greater than the maximum"),
    Case("port name", op(ports=["http"]), "does not match"),
    Case("unknown condition key", when(key="request.auth.claims[iss]", values=["x"]),
         "does not match"),
    Case("condition CIDR", when(key="source.ip", values=["not-an-ip"]),
         "must be IPv4 addresses or CIDRs"),
    Case("condition port", when(key="destination.port", notValues=["http"]),
         "must be port numbers"),
    Case("condition principal", when(key="source.principal", values=["not a principal"]),
         "must be principals"),
    Case("port level without selector", peer(portLevelMtls={"8080": {"mode": "STRICT"}}),
         "needs a selector with matchLabels"),
    Case("port level with an empty selector",
         peer(selector={}, portLevelMtls={"8080": {"mode": "STRICT"}}),
         "needs a selector with matchLabels"),
    Case("port level key not a port",
         peer(selector=SELECTED, portLevelMtls={"http": {"mode": "STRICT"}}),
         "keys must be port numbers"),
    Case("port level key 0", peer(selector=SELECTED, portLevelMtls={"0": {"mode": "STRICT"}}),
         "keys must be port numbers"),
    # object metadata (the API server's own rules for every object)
    Case("name too long", edit(authz(), lambda o: o["metadata"].update(name="a" * 254)),
         "metadata.name"),
    Case("name with capitals", edit(peer(), lambda o: o["metadata"].update(name="Default")),
         "metadata.name"),
    # too long / too many: bounds that exist only at admission
    Case("namespace pattern too long", src(namespaces=["n" * 64]), "is too long",
         parser_accepts=True, why="admission-only bound (a namespace name has at most 63)"),
    Case("too many rules", authz(rules=[{}] * 33), "is too long",
         parser_accepts=True, why="admission-only bound (keeps CEL cost estimates small)"),
    Case("too many condition values",
         when(key="source.namespace", values=[f"ns-{i}" for i in range(33)]), "is too long",
         parser_accepts=True, why="admission-only bound (keeps CEL cost estimates small)"),
    Case("path too long", op(paths=["/" + "a" * 1024]), "is too long",
         parser_accepts=True, why="admission-only bound"),
    # what only the controller checks
    Case("dry-run annotation not a boolean",
         edit(authz(), lambda o: o["metadata"].update(annotations={"nodemesh.io/dry-run": "yes"})),
         None, parser_accepts=False,
         why="metadata.annotations is not covered by a CRD schema; the controller rejects it"),
    Case("dry-run on a PeerAuthentication",
         edit(peer(), lambda o: o["metadata"].update(annotations={"nodemesh.io/dry-run": "true"})),
         None, parser_accepts=False,
         why="metadata.annotations is not covered by a CRD schema; the controller rejects it"),
]


@pytest.mark.parametrize("case", VALID + INVALID, ids=lambda c: c.id)
def test_admission(admission: dict[str, Admission], case: Case) -> None:
    errors = admission[case.obj["kind"]].errors(case.obj)
    if case.admission is None:
        assert errors == []
    else:
        assert errors, "admitted, expected a rejection"
        assert any(case.admission in e for e in errors), errors


@pytest.mark.parametrize("case", VALID + INVALID, ids=lambda c: c.id)
def test_admission_agrees_with_the_controller(
    admission: dict[str, Admission], case: Case
) -> None:
    admitted = not admission[case.obj["kind"]].errors(case.obj)
    error = parser_error(case.obj)
    expected = admitted if case.parser_accepts is None else case.parser_accepts
    assert (error is None) == expected, error or "the controller accepts it"
    assert (expected != admitted) == bool(case.why), "a difference needs a reason, and only one"


def test_the_table_has_every_kind_of_invalid_object() -> None:
    ids = " ".join(c.id for c in INVALID)
    for needed in ("unknown action", "without key", "unknown spec field", "not a string",
                   "too long"):
        assert needed in ids, needed


# ---- the schemas themselves -----------------------------------------------------------------

KEYWORDS = {
    "type", "description", "properties", "additionalProperties", "items", "required", "enum",
    "pattern", "maxLength", "minLength", "maxItems", "minItems", "maxProperties", "minimum",
    "maximum", "anyOf", "x-kubernetes-validations", "x-kubernetes-int-or-string",
}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(node: dict[str, Any], path: str) -> list[str]:
    """The API server's structural-schema rules that our schemas could break (a CRD that breaks
    them is refused at creation), plus unknown keywords (typos such as maxItem)."""
    problems = [f"{path}: unknown keyword {k}" for k in node if k not in KEYWORDS]
    if node.get("x-kubernetes-int-or-string"):
        if "type" in node:
            problems.append(f"{path}: int-or-string must not set type")
        if node.get("anyOf", INT_OR_STRING) != INT_OR_STRING:
            problems.append(f"{path}: int-or-string anyOf must be integer, string")
    else:
        if "type" not in node:
            problems.append(f"{path}: no type")
        if "anyOf" in node:
            problems.append(f"{path}: anyOf only for int-or-string")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are exclusive")
    if node.get("type") == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{path}: an array needs one items schema")
    for key, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{path}.{key}")
    return problems


@pytest.mark.parametrize("kind", [AUTHZ, PEER])
def test_schema_is_structural(kind: str) -> None:
    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural_problems(schema, "") == []
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_structural_check_finds_a_typo() -> None:
    assert structural_problems({"type": "array", "maxItem": 3, "items": {"type": "string"}},
                               "x") == ["x: unknown keyword maxItem"]


def cel_rules(node: Any) -> list[dict[str, str]]:
    if isinstance(node, list):
        return [r for n in node for r in cel_rules(n)]
    if not isinstance(node, dict):
        return []
    return list(node.get("x-kubernetes-validations", [])) + [
        r for k, v in node.items() if k != "x-kubernetes-validations" for r in cel_rules(v)
    ]


@pytest.mark.parametrize("kind", [AUTHZ, PEER])
def test_every_cel_rule_compiles_and_is_exercised_by_the_table(kind: str) -> None:
    import celpy

    env = celpy.Environment()
    rules = cel_rules(crd_for(kind))
    assert rules
    fragments = [c.admission for c in INVALID if c.obj["kind"] == kind and c.admission]
    for rule in rules:
        env.compile(rule["rule"])
        assert any(f in rule["message"] for f in fragments), (
            f"no invalid case exercises: {rule['message']}"
        )
