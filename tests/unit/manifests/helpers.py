"""Offline stand-ins for what the API server does with the files in ``daemonset/``.

* :func:`apply_f_files` lists what ``kubectl apply -f daemonset/`` reads (top level only, by
  extension, in the order kubectl walks the directory: lexical).
* :class:`Admission` validates a custom resource the way the API server does for our CRDs:
  ``metadata.name``/``namespace`` rules of every object, the CRD's structural OpenAPI schema as
  JSON Schema (Draft 2020-12) with unknown fields refused (kubectl's default strict field
  validation; the server would otherwise prune them), and the ``x-kubernetes-validations`` CEL
  rules evaluated with cel-python where they sit in the schema, after the schema passed (as the
  server does: CEL never sees a value of the wrong type). A CEL rule that raises counts as a
  rejection, as on the server.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

REPO = Path(__file__).resolve().parents[3]
DAEMONSET = REPO / "daemonset"
EXAMPLES = REPO / "examples" / "policies"
VAGRANT = REPO / "vagrant"
NAMESPACE = "nodemesh-system"
APPLY_F_EXTENSIONS = (".yaml", ".yml", ".json")
CLUSTER_SCOPED = {
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def apply_f_files(directory: Path = DAEMONSET) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix in APPLY_F_EXTENSIONS
    )


@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.name}[{self.index}] {self.kind} {self.name}"


def load_docs(path: Path) -> list[Doc]:
    with path.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    out = []
    for i, d in enumerate(docs):
        assert isinstance(d, dict), f"{path}: document {i} is not a mapping"
        out.append(Doc(path, i, d))
    return out


def all_docs() -> list[Doc]:
    return [d for p in apply_f_files() for d in load_docs(p)]


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d.body for d in all_docs() if d.kind == kind and d.name == name]
    assert len(hits) == 1, f"expected one {kind} {name} in daemonset/, found {len(hits)}"
    return hits[0]


def crd_for(kind: str) -> dict[str, Any]:
    for d in all_docs():
        if d.kind == "CustomResourceDefinition" and d.body["spec"]["names"]["kind"] == kind:
            return d.body
    raise AssertionError(f"no CRD for {kind} in daemonset/")


# ---- admission -------------------------------------------------------------------------------


def strict_json_schema(node: Any) -> Any:
    """The structural schema as JSON Schema with unknown fields refused."""
    if isinstance(node, list):
        return [strict_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_json_schema(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _rules(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[str, str, str, Any]]:
    """(path, rule, message, self) for every CEL rule that applies to ``value``."""
    for v in schema.get("x-kubernetes-validations", []):
        yield path, v["rule"], v.get("message", v["rule"]), value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                yield from _rules(props[key], item, f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _rules(extra, item, f"{path}[{key}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _rules(schema["items"], item, f"{path}[{i}]")


class Admission:
    """What the API server would say about a custom resource of one CRD."""

    def __init__(self, crd: dict[str, Any]) -> None:
        versions = crd["spec"]["versions"]
        assert len(versions) == 1, "one served version expected"
        self.group = crd["spec"]["group"]
        self.version = versions[0]["name"]
        self.kind = crd["spec"]["names"]["kind"]
        self.schema = versions[0]["schema"]["openAPIV3Schema"]
        self.validator = jsonschema.Draft202012Validator(strict_json_schema(self.schema))
        self.cel = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def _program(self, rule: str) -> Any:
        if rule not in self._programs:
            self._programs[rule] = self.cel.program(self.cel.compile(rule))
        return self._programs[rule]

    def errors(self, obj: dict[str, Any]) -> list[str]:
        meta = obj.get("metadata")
        if obj.get("apiVersion") != f"{self.group}/{self.version}" or obj.get("kind") != self.kind:
            return [f"not a {self.group}/{self.version} {self.kind}"]
        if not isinstance(meta, dict):
            return ["metadata: required"]
        errors: list[str] = []
        name, namespace = meta.get("name"), meta.get("namespace", "default")
        if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
            errors.append(f"metadata.name: {name!r} is not a DNS subdomain")
        if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
            errors.append(f"metadata.namespace: {namespace!r} is not a DNS label")
        schema_errors = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in self.validator.iter_errors(obj)
        ]
        if schema_errors:
            return errors + schema_errors
        for path, rule, message, value in _rules(self.schema, obj, ""):
            activation = {"self": json_to_cel(copy.deepcopy(value))}
            try:
                result = self._program(rule).evaluate(activation)
            except CELEvalError as exc:
                errors.append(f"{path.lstrip('.')}: {message} (evaluation error: {exc.args[0]})")
                continue
            if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                errors.append(f"{path.lstrip('.')}: {message}")
        return errors
