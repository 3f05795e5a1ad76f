"""Small, typed readers for wire objects (parsed JSON/YAML). Every reader takes the field path so
errors say exactly where the input was wrong. Nothing here is specific to one message type."""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from meshapi.errors import WireError

T = TypeVar("T")

#: deepest nesting of objects/lists :func:`loads` accepts. The mesh's own messages nest about 8
#: deep (a policy rule's ``from[].source.ipBlocks[]``); the bound leaves room for what users
#: write and keeps every later (recursive) walk of the value far from the interpreter's limit.
MAX_JSON_DEPTH = 64


def loads(data: bytes | str, path: str = "") -> object:
    """Parse JSON from the network or a user, stricter than :func:`json.loads`.

    Raises :class:`WireError` (never anything else) for: text that is not JSON or not UTF-8,
    a key repeated in one object (two readers could each take a different one), ``NaN`` and
    ``Infinity`` and numbers that overflow to them (``1e999``), integers of more digits than
    the interpreter converts, and nesting deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        value = json.loads(
            data,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        # the decoder recurses per level: this input nests far deeper than MAX_JSON_DEPTH
        raise WireError(
            path, f"not JSON we accept: nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, our hooks, int digits
        raise WireError(path, f"not JSON: {exc}") from exc
    _check_depth(value, path)
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_depth(value: object, path: str) -> None:
    """Iterative (the point is not to recurse): every container at most MAX_JSON_DEPTH deep."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Sequence[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise WireError(path, f"not JSON we accept: nested deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def as_mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireError(path, f"expected an object, got {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise WireError(path, f"keys must be strings, got {key!r}")
    return value


def as_list(value: object, path: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise WireError(path, f"expected a list, got {type_name(value)}")
    return value


def type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


def req_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    if key not in obj:
        raise WireError(join(path, key), "required field is missing")
    return opt_str(obj, key, path) or _empty(join(path, key))


def _empty(path: str) -> str:
    raise WireError(path, "must not be empty")


def opt_str(obj: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise WireError(join(path, key), f"expected a string, got {type_name(value)}")
    return value


def req_int(obj: Mapping[str, Any], key: str, path: str, lo: int, hi: int) -> int:
    if key not in obj:
        raise WireError(join(path, key), "required field is missing")
    return check_int(obj[key], join(path, key), lo, hi)


def check_int(value: object, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(path, f"expected an integer, got {type_name(value)}")
    if not lo <= value <= hi:
        raise WireError(path, f"{value} is out of range [{lo}, {hi}]")
    return value


def opt_bool(obj: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise WireError(join(path, key), f"expected a boolean, got {type_name(value)}")
    return value


def str_map(value: object, path: str) -> dict[str, str]:
    if value is None:
        return {}
    mapping = as_mapping(value, path)
    out: dict[str, str] = {}
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise WireError(join(path, key), f"expected a string, got {type_name(item)}")
        out[key] = item
    return out


def ipv4(value: object, path: str) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise WireError(path, f"expected an IPv4 address string, got {type_name(value)}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise WireError(path, f"{value!r} is not an IPv4 address") from exc


def frozen_labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))
