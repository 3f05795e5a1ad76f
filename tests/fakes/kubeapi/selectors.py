"""Label and field selectors, parsed and matched as the API server does. Pure; no I/O.

Label selector grammar (comma-separated requirements, all must hold):
``key``, ``!key``, ``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``,
``key notin (a,b)``, ``key>N``, ``key<N``. ``!=`` and ``notin`` also match objects without the
label, as on a real server.

Field selectors: ``path=value``, ``path==value``, ``path!=value``; only the paths the resource
supports (``metadata.name``, ``metadata.namespace`` plus the resource's own list); a missing field
compares as the empty string (``spec.nodeName=`` selects unscheduled pods).

Invariant: parsing either raises `SelectorError` with the requirement that failed, or returns
requirements whose keys and values are valid label syntax — matching never raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

LabelOp = Literal["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]
FieldOp = Literal["=", "!="]

_NAME: Final = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY_RE: Final = re.compile(rf"^(({_PREFIX})/)?{_NAME}$")
_VALUE_RE: Final = re.compile(rf"^({_NAME})?$")
_SET_RE: Final = re.compile(r"^(?P<key>[^\s!=<>()]+)\s+(?P<op>in|notin)\s*\((?P<vals>[^()]*)\)$")
_CMP_RE: Final = re.compile(r"^(?P<key>[^\s!=<>()]+)\s*(?P<op>==|!=|=|>|<)\s*(?P<val>[^\s()]*)$")


class SelectorError(ValueError):
    """A selector that does not parse; the message names the requirement and the problem."""


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: LabelOp
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return present
            case "!":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "gt" | "lt":
                if value is None:
                    return False
                try:
                    number = int(value)
                except ValueError:
                    return False
                bound = int(self.values[0])
                return number > bound if self.op == "gt" else number < bound


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    op: FieldOp
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        actual = field_value(obj, self.path)
        return (actual == self.value) == (self.op == "=")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _check_key(key: str, requirement: str) -> None:
    if not _KEY_RE.match(key) or len(key.rpartition("/")[0]) > 253:
        raise SelectorError(
            f"unable to parse requirement: {requirement!r}: invalid label key {key!r}: "
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )


def _check_value(value: str, requirement: str) -> None:
    if not _VALUE_RE.match(value):
        raise SelectorError(
            f"unable to parse requirement: {requirement!r}: invalid label value {value!r}: "
            "must be 63 characters or less and consist of alphanumeric characters, '-', '_' "
            "or '.', starting and ending with an alphanumeric character"
        )


def parse_label_selector(text: str) -> tuple[LabelRequirement, ...]:
    if not text.strip():
        return ()
    out: list[LabelRequirement] = []
    for part in _split(text):
        if not part:
            raise SelectorError(f"found empty requirement in label selector {text!r}")
        if part.startswith("!"):
            key = part[1:].strip()
            _check_key(key, part)
            out.append(LabelRequirement(key, "!"))
            continue
        if m := _SET_RE.match(part):
            key = m["key"]
            _check_key(key, part)
            values = tuple(v.strip() for v in m["vals"].split(","))
            if values == ("",):
                raise SelectorError(
                    f"unable to parse requirement: {part!r}: for 'in', 'notin' operators, "
                    "values set can't be empty"
                )
            for v in values:
                _check_value(v, part)
            out.append(LabelRequirement(key, "in" if m["op"] == "in" else "notin", values))
            continue
        if m := _CMP_RE.match(part):
            key, op, val = m["key"], m["op"], m["val"]
            _check_key(key, part)
            if op in (">", "<"):
                if not re.fullmatch(r"-?[0-9]+", val):
                    raise SelectorError(
                        f"unable to parse requirement: {part!r}: for 'Gt', 'Lt' operators, "
                        f"the value must be an integer, not {val!r}"
                    )
                out.append(LabelRequirement(key, "gt" if op == ">" else "lt", (val,)))
                continue
            _check_value(val, part)
            out.append(LabelRequirement(key, "!=" if op == "!=" else "=", (val,)))
            continue
        if " " not in part and "(" not in part:
            _check_key(part, part)
            out.append(LabelRequirement(part, "exists"))
            continue
        raise SelectorError(
            f"unable to parse requirement: {part!r}: expected key, !key, key=value, key==value, "
            "key!=value, key in (values), key notin (values)"
        )
    return tuple(out)


def parse_field_selector(text: str, supported: tuple[str, ...]) -> tuple[FieldRequirement, ...]:
    if not text.strip():
        return ()
    out: list[FieldRequirement] = []
    for part in _split(text):
        m = re.fullmatch(r"(?P<path>[^=!]+?)\s*(?P<op>==|!=|=)\s*(?P<val>.*)", part)
        if not m:
            raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
        path = m["path"].strip()
        if path not in supported:
            raise SelectorError(f"field label not supported: {path}")
        out.append(FieldRequirement(path, "!=" if m["op"] == "!=" else "=", m["val"]))
    return tuple(out)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The value at dotted ``path`` as a string; a missing field (or a non-scalar) is ``""``."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, str | int | float):
        return str(node)
    return ""


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


@dataclass(frozen=True)
class Selector:
    """A list's or watch's combined label and field selector."""

    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        lbl = labels_of(obj)
        return all(r.matches(lbl) for r in self.labels) and all(r.matches(obj) for r in self.fields)

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields
