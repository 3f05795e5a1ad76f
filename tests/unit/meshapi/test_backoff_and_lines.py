from __future__ import annotations

import random

import pytest

from meshapi.backoff import Backoff
from meshapi.discovery import Delta, DiscoveryState, LineSplitter, Snapshot
from meshapi.errors import WireError


def test_line_splitter_joins_chunks_and_skips_blank_lines() -> None:
    s = LineSplitter(limit=10)
    assert list(s.feed(b"ab")) == []
    assert list(s.feed(b"c\n\nde\nf")) == [b"abc", b"de"]
    assert list(s.feed(b"\n")) == [b"f"]


@pytest.mark.parametrize("data", [b"12345", b"123456\n"])
def test_line_splitter_bounds_lines(data: bytes) -> None:
    with pytest.raises(WireError, match="exceeds 4"):
        list(LineSplitter(limit=4).feed(data))


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(base=1, cap=8, rng=random.Random(1))
    delays = [b.next() for _ in range(10)]
    assert all(0 <= d <= 8 for d in delays)
    assert delays[0] <= 1
    b.reset()
    assert b.next() <= 1
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_apply_line_decodes_and_forgets_resume_point_on_gap() -> None:
    import json

    state = DiscoveryState()
    message, change = state.apply_line(json.dumps(Snapshot("e", 1, (), ()).to_wire()).encode())
    assert message.type == "snapshot" and change.full and state.synced
    with pytest.raises(WireError, match="not JSON"):
        state.apply_line(b"{nope")
    gap = b'{"type": "delta", "epoch": "e", "version": 5}'
    with pytest.raises(WireError, match="fresh snapshot"):
        state.apply_line(gap)
    assert not state.synced and state.resume_params() == {}


def test_apply_line_refuses_deep_nesting_with_wire_error() -> None:
    state = DiscoveryState()
    line = b'{"type": "snapshot", "epoch": "e", "version": 1, "workloads": ' + b"[" * 50000
    with pytest.raises(WireError, match="nested deeper"):  # was RecursionError
        state.apply_line(line + b"]" * 50000 + b"}")


def test_a_delta_with_a_bad_service_key_changes_nothing() -> None:
    import json

    from tests.fuzz.targets.discovery import SNAPSHOT

    state = DiscoveryState()
    state.apply(SNAPSHOT)
    before = (dict(state.workloads), dict(state.services), state.version)
    delta = {"type": "delta", "epoch": SNAPSHOT.epoch, "version": SNAPSHOT.version + 1,
             "remove": {"workloads": ["uid-a"], "services": ["default/b", "not a key"]}}
    # was an IdentityError after uid-a had already been removed (half-applied)
    with pytest.raises(WireError, match=r"remove\.services\[1\]"):
        state.apply_line(json.dumps(delta).encode())
    assert (dict(state.workloads), dict(state.services), state.version) == before
    with pytest.raises(WireError, match=r"remove\.services\[0\]"):
        state.apply(Delta(SNAPSHOT.epoch, SNAPSHOT.version + 1, remove_workloads=("uid-a",),
                          remove_services=("bad",)))
    assert dict(state.workloads) == before[0]


def test_line_splitter_scans_a_long_line_once() -> None:
    s = LineSplitter(limit=1 << 20)
    for _ in range(255):
        assert list(s.feed(b"x" * 4096)) == []
    assert s._scanned == 255 * 4096
    assert [len(line) for line in s.feed(b"y\nz")] == [255 * 4096 + 1]
    assert list(s.feed(b"\n")) == [b"z"]
