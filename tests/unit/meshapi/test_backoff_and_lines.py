from __future__ import annotations

import random

import pytest

from meshapi.backoff import Backoff
from meshapi.discovery import DiscoveryState, LineSplitter, Snapshot
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
