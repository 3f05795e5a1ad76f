"""meshapi.wire.loads: the strict JSON reader every network-facing JSON parser uses (issue 10)."""

from __future__ import annotations

import pytest

from meshapi import wire
from meshapi.errors import WireError


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"[" * 30000 + b"]" * 30000, "nested deeper than 64"),  # was RecursionError
        (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, "nested deeper than 64"),
        (b"1" * 5000, "4300 digits"),  # was ValueError (not a JSONDecodeError)
        (b'{"seq": 1, "seq": 2}', "appears twice"),
        (b"NaN", "NaN is not JSON"),
        (b"[-Infinity]", "Infinity is not JSON"),
        (b'{"ttl": 1e999}', "out of range"),
        (b"\xff", "utf-8"),
        (b"{nope", "not JSON"),
    ],
)
def test_loads_refuses_with_wire_error(data: bytes, fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        wire.loads(data, "")


def test_loads_accepts_json_up_to_the_depth_bound_and_names_the_path() -> None:
    assert wire.loads(b"[" * 64 + b"]" * 64) is not None
    assert wire.loads('{"a": [1.5, "é"]}'.encode()) == {"a": [1.5, "é"]}
    with pytest.raises(WireError) as err:
        wire.loads(b"NaN", "body")
    assert err.value.path == "body"
