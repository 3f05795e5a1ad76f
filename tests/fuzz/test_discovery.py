"""The fuzz tier for the discovery stream (``tests/fuzz/targets/discovery.py``): snapshots,
deltas and heartbeats built from real workloads, services and policies, mutated structurally
and textually, plus raw bytes and whole streams; each input under its target's bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.fuzz.strategies import near_valid_json
from tests.fuzz.targets.discovery import MESSAGES

pytestmark = pytest.mark.fuzz

_KEYS = ["workloads", "services", "authorizationPolicies", "peerAuthentications", "upsert",
         "remove", "rootNamespace", "pathNormalization", "epoch", "version"]
_MESSAGE = st.sampled_from(MESSAGES).flatmap(lambda m: near_valid_json(m, _KEYS))


@given(_MESSAGE)
def test_discovery_line_near_valid(data: bytes) -> None:
    check("discovery.line", data)


@given(st.binary(max_size=512))
def test_discovery_line_raw_bytes(data: bytes) -> None:
    check("discovery.line", data)


_SPLIT = st.integers(0, 255).map(lambda b: bytes([b]))


# up to four messages per input: fewer examples
@settings(max_examples=max(1, settings().max_examples // 3))
@given(_SPLIT, st.lists(_MESSAGE | st.binary(max_size=64), max_size=4),
       st.sampled_from([b"\n", b"\r\n", b"\n\n", b" \n", b""]))
def test_discovery_stream(split: bytes, lines: list[bytes], eol: bytes) -> None:
    check("discovery.stream", split + eol.join(lines) + eol)
