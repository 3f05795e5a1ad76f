"""meshapi.discovery: the mesh-wide ``pathNormalization`` of every snapshot."""

from __future__ import annotations

import json

import pytest

from meshapi.discovery import DiscoveryState, Snapshot, decode
from meshapi.errors import WireError
from meshapi.httppath import DEFAULT_PATH_NORMALIZATION, PathNormalization


def test_snapshot_carries_the_mode_and_absent_means_default() -> None:
    snap = Snapshot("e", 1, (), (), path_normalization=PathNormalization.BASE)
    wire = snap.to_wire()
    assert wire["pathNormalization"] == "BASE"
    assert decode(json.loads(json.dumps(wire))) == snap
    del wire["pathNormalization"]
    decoded = decode(wire)
    assert isinstance(decoded, Snapshot)
    assert decoded.path_normalization is DEFAULT_PATH_NORMALIZATION


@pytest.mark.parametrize("bad", ["merge_slashes", "", 3, ["BASE"]])
def test_a_bad_mode_names_the_field(bad: object) -> None:
    wire = Snapshot("e", 1, (), ()).to_wire()
    wire["pathNormalization"] = bad
    with pytest.raises(WireError) as err:
        decode(wire)
    assert "pathNormalization" in str(err.value)


def test_state_follows_the_snapshot() -> None:
    state = DiscoveryState()
    assert state.path_normalization is DEFAULT_PATH_NORMALIZATION
    line = json.dumps(Snapshot("e", 1, (), (),
                               path_normalization=PathNormalization.NONE).to_wire())
    state.apply_line(line.encode())
    assert state.path_normalization is PathNormalization.NONE
