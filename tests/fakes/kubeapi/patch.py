"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902). Pure; no I/O.

Strategic merge patch is served as a merge patch: that is exact for maps (metadata, labels,
annotations, spec fields that are maps) and differs only for the lists Kubernetes merges by key
(containers, ports), which the fake replaces whole. Tests that rely on keyed list merging must
send the whole list.

Invariant: the input documents are never mutated; every function returns a new document.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied; the message names the operation and the path."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str, op_index: int) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"operation {op_index}: path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], op_index: int, path: str) -> Any:
    node = doc
    for tok in tokens[:-1]:
        if isinstance(node, dict):
            if tok not in node:
                raise PatchError(f"operation {op_index}: path {path!r}: {tok!r} does not exist")
            node = node[tok]
        elif isinstance(node, list):
            node = node[_index(tok, len(node), op_index, path)]
        else:
            raise PatchError(f"operation {op_index}: path {path!r}: {tok!r} is not a container")
    return node


def _index(tok: str, length: int, op_index: int, path: str, *, allow_end: bool = False) -> int:
    if tok == "-" and allow_end:
        return length
    if not tok.isdigit():
        raise PatchError(f"operation {op_index}: path {path!r}: {tok!r} is not an array index")
    i = int(tok)
    if i > length or (i == length and not allow_end):
        raise PatchError(f"operation {op_index}: path {path!r}: index {i} out of range")
    return i


def _get(doc: Any, path: str, op_index: int) -> Any:
    tokens = _pointer(path, op_index)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, op_index, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"operation {op_index}: path {path!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(last, len(parent), op_index, path)]
    raise PatchError(f"operation {op_index}: path {path!r}: parent is not a container")


def _remove(doc: Any, path: str, op_index: int) -> Any:
    tokens = _pointer(path, op_index)
    if not tokens:
        raise PatchError(f"operation {op_index}: cannot remove the whole document")
    parent = _parent(doc, tokens, op_index, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"operation {op_index}: path {path!r} does not exist")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(last, len(parent), op_index, path))
    raise PatchError(f"operation {op_index}: path {path!r}: parent is not a container")


def _add(doc: Any, path: str, value: Any, op_index: int, *, replace: bool) -> Any:
    tokens = _pointer(path, op_index)
    if not tokens:
        return value
    parent = _parent(doc, tokens, op_index, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"operation {op_index}: path {path!r} does not exist")
        parent[last] = value
    elif isinstance(parent, list):
        if replace:
            parent[_index(last, len(parent), op_index, path)] = value
        else:
            parent.insert(_index(last, len(parent), op_index, path, allow_end=True), value)
    else:
        raise PatchError(f"operation {op_index}: path {path!r}: parent is not a container")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: apply ``operations`` (a list of ``{"op", "path", ...}``) in order, atomically."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for i, op in enumerate(operations):
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise PatchError(f"operation {i}: must be an object with a string 'path'")
        kind, path = op.get("op"), op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {i} ({kind} {path}): missing 'value'")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), i, replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), i, replace=True)
        elif kind == "remove":
            _remove(doc, path, i)
        elif kind == "test":
            if _get(doc, path, i) != op["value"]:
                raise PatchError(f"operation {i}: test of {path!r} failed")
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise PatchError(f"operation {i} ({kind} {path}): missing string 'from'")
            if kind == "move":
                value = _remove(doc, src, i)
            else:
                value = copy.deepcopy(_get(doc, src, i))
            doc = _add(doc, path, value, i, replace=False)
        else:
            raise PatchError(f"operation {i}: unknown op {kind!r}")
    return doc
