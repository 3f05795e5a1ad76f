"""The fuzz tier for the agent ↔ ztunnel protocol (``tests/fuzz/targets/zds.py``): every
message kind built from the real schema (a real workload), mutated structurally and textually,
plus raw bytes; each input under its target's CPU-time deadline and memory bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshapi import zds
from tests.fuzz.harness import check
from tests.fuzz.strategies import near_valid_json
from tests.unit.ztunnel.helpers import workload

pytestmark = pytest.mark.fuzz

_WORKLOAD = dict(workload("a", "10.78.1.2").to_wire(), netns="/run/netns/a")
_KEYS = ["pods", "version", "workload", "redirection", "uid", "error", *_WORKLOAD]
MESSAGES = [
    {"type": "hello", "version": 1, "pods": ["uid-a", "uid-b"]},
    {"type": "add", "seq": 1, "workload": _WORKLOAD, "redirection": "ebpf"},
    {"type": "keep", "seq": 2, "uid": "uid-a"},
    {"type": "delete", "seq": 3, "uid": "uid-a"},
    {"type": "snapshot_complete", "seq": 4},
    {"type": "ack", "seq": 5, "error": None},
]
_MESSAGE = st.sampled_from(MESSAGES).flatmap(lambda m: near_valid_json(m, _KEYS))


@given(_MESSAGE)
def test_zds_decode_near_valid(data: bytes) -> None:
    check("zds.decode", data)


@given(st.binary(max_size=1024) | st.just(b"\x00" * (zds.MAX_MESSAGE_BYTES + 1)))
def test_zds_decode_raw_bytes(data: bytes) -> None:
    check("zds.decode", data)


# an event loop per input: half the examples
@settings(max_examples=max(1, settings().max_examples // 2))
@given(_MESSAGE)
def test_zds_session_near_valid(data: bytes) -> None:
    check("zds.session", data)


# a real socket pair and event loop per input: slower, fewer examples
@settings(max_examples=300)
@given(_MESSAGE)
def test_zds_client_near_valid(data: bytes) -> None:
    check("zds.client", data)
