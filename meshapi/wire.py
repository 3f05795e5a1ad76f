"""Small, typed readers for wire objects (parsed JSON/YAML). Every reader takes the field path so
errors say exactly where the input was wrong. Nothing here is specific to one message type."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from meshapi.errors import WireError

T = TypeVar("T")


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
