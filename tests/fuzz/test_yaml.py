"""The fuzz tier for user-written YAML (``tests/fuzz/targets/yaml.py``): the Kubernetes-shaped
objects users write (Pod, Service, Namespace, ServiceAccount, AuthorizationPolicy,
PeerAuthentication), mutated structurally, dumped, then with hostile YAML (alias bombs, deep
nesting, Python tags, non-string keys, self-references) spliced in; plus raw text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.fuzz.strategies import mutated_wire
from tests.fuzz.targets.http import mutated
from tests.fuzz.targets.yaml import HOSTILE_YAML, dump
from tests.unit.controller.helpers import pod, service

pytestmark = pytest.mark.fuzz

OBJECTS = [
    pod(uid="u2", name="web-1", ip="10.78.1.3"),
    service(),
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": "shop", "labels": {"nodemesh.io/dataplane-mode": "enabled"}}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}},
    {"apiVersion": "security.nodemesh.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "allow", "namespace": "default"},
     "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
              "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"],
                                              "ipBlocks": ["10.0.0.0/8"]}}],
                         "to": [{"operation": {"ports": ["8080"], "paths": ["/a/*"]}}]}]}},
    {"apiVersion": "security.nodemesh.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "strict", "namespace": "default"},
     "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}},
]
_KEYS = ["apiVersion", "kind", "metadata", "name", "namespace", "spec", "labels", "selector",
         "rules", "from", "to", "mtls", "ports", "status", "podIP"]


@st.composite
def _text(draw: st.DrawFn) -> bytes:
    docs = draw(st.lists(st.sampled_from(OBJECTS).flatmap(lambda o: mutated_wire(o, _KEYS)),
                         min_size=1, max_size=3))
    text = "---\n".join(dump(d) for d in docs)
    lines = text.split("\n")
    for _ in range(draw(st.integers(0, 2))):
        hostile = draw(st.sampled_from(HOSTILE_YAML))
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if ":" in line and draw(st.booleans()):
            # the value of this line's key becomes the hostile YAML (flow, or indented block)
            key = line[: line.index(":") + 1]
            indent = " " * (len(key) - len(key.lstrip()) + 2)
            if "\n" in hostile:
                lines[i] = key + "\n" + "\n".join(indent + h for h in hostile.split("\n"))
            else:
                lines[i] = key + " " + hostile
        else:
            lines.insert(i, hostile)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


_TEXT = _text() | mutated(_text())
#: the three YAML targets parse the same kind of text (and translate it): a third of the
#: examples each
_THIRD = settings(max_examples=max(1, settings().max_examples // 3))


@_THIRD
@given(_TEXT)
def test_yaml_localsource_near_valid(data: bytes) -> None:
    check("yaml.localsource", data)


@_THIRD
@given(_TEXT)
def test_yaml_manifests_near_valid(data: bytes) -> None:
    check("yaml.manifests", data)


@_THIRD
@given(_TEXT)
def test_yaml_policy_near_valid(data: bytes) -> None:
    check("yaml.policy", data)


@given(st.binary(max_size=256) | st.text(alphabet="[]{}:-&*!? \n\tab,'\"|>#%@`", max_size=128)
       .map(str.encode))
def test_yaml_raw(data: bytes) -> None:
    for name in ("yaml.localsource", "yaml.manifests", "yaml.policy"):
        check(name, data)
