"""Hypothesis strategies shared by the fuzz harnesses of the control-plane parsers (ZDS,
discovery, CNI, CSR body, YAML): take a valid wire object built from the real schema, mutate it
structurally (a value of the wrong type, a missing or an extra field, a huge or non-finite
number, deep nesting, a repeated key), serialize it, and sometimes flip bytes of the text."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.targets.http import mutated


def nested(depth: int, kind: str = "list") -> Any:
    out: Any = 0
    for _ in range(depth):
        out = [out] if kind == "list" else {"a": out}
    return out


#: values that break naive readers: wrong types, bounds, non-finite, deep, long, odd text
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 65535, 65536, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1,
    10**40, 1.5, -0.0, 1e308, float("nan"), float("inf"), float("-inf"), "", " ", "x",
    "a" * 300, "\ud800", "\x00", "é", "../..", "%2e%2e", "spiffe://cluster.local/ns/a/sa/b",
    "10.0.0.1", "999.1.1.1", "ADD", [], {}, [1, "a", None], {"": ""}, {"a": {"b": []}},
    nested(30), nested(63), nested(65), nested(70, "dict"), nested(200), list(range(500)),
]

#: a fresh copy each time: a mutation must never change HOSTILE itself
_hostile = st.sampled_from(HOSTILE).map(copy.deepcopy)


def _containers(value: Any, out: list[Any]) -> None:
    if isinstance(value, dict | list):
        out.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            _containers(child, out)


@st.composite
def mutated_wire(draw: st.DrawFn, base: Any, keys: list[str] | None = None) -> Any:
    """A deep copy of the wire object ``base`` with 0-3 structural mutations."""
    value = json.loads(json.dumps(base))
    extra_keys = [*(keys or []), "type", "seq", "spec", "zzz", ""]
    for _ in range(draw(st.integers(0, 3))):
        containers: list[Any] = []
        _containers(value, containers)
        if not containers or draw(st.integers(0, 9)) == 0:
            value = draw(_hostile)  # the whole message replaced
            continue
        target = containers[draw(st.integers(0, len(containers) - 1))]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if isinstance(target, dict):
            existing = sorted(target)
            if op == "add" or not existing:
                target[draw(st.sampled_from(extra_keys))] = draw(_hostile)
            elif op == "delete":
                del target[draw(st.sampled_from(existing))]
            else:
                target[draw(st.sampled_from(existing))] = draw(_hostile)
        else:
            if op == "add" or not target:
                target.append(draw(_hostile))
            elif op == "delete":
                del target[draw(st.integers(0, len(target) - 1))]
            else:
                target[draw(st.integers(0, len(target) - 1))] = draw(_hostile)
    return value


@st.composite
def json_text(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON (NaN allowed, ASCII or not), then maybe a repeated key or a deeply
    nested prefix, as UTF-8; sometimes with a few bytes flipped, inserted or deleted."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=draw(st.booleans()))
    trick = draw(st.integers(0, 9))
    if trick == 0 and text.startswith("{") and len(text) > 2:
        # repeat the first key with another value: {"type":"x","type":...}
        m = re.match(r'\{("(?:[^"\\]|\\.)*"):', text)
        if m:
            text = "{" + m.group(1) + ":" + json.dumps(draw(_hostile)) + "," + text[1:]
    elif trick == 1:
        depth = draw(st.sampled_from([64, 65, 999, 1000, 5000, 40000]))
        text = "[" * depth + text + "]" * draw(st.sampled_from([0, depth]))
    elif trick == 2:
        text = text.replace("1", "1" + "0" * draw(st.sampled_from([400, 4300, 5000])), 1)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutated(st.just(data)))
    return data


def near_valid_json(base: Any, keys: list[str] | None = None) -> st.SearchStrategy[bytes]:
    return mutated_wire(base, keys).flatmap(json_text)
