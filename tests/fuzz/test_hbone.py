"""The fuzz tier for HBONE (issue 10): hypothesis drives the targets of
``tests/fuzz/targets/hbone.py`` (one HBONE connection, server or client side, through a fake
transport) with generated frame sequences after a valid start — HEADERS/CONTINUATION floods,
oversized header blocks, stream-id abuse, window overflow, RST/PING/SETTINGS/empty-frame floods
with a peer that reads or not — and with raw bytes; each input runs under the target's CPU-time
deadline and memory bound (``tests/fuzz/harness.py``)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.fuzz.targets.hbone import client_start, server_start, session

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("traced")]


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    """tracemalloc on for the whole module, so that ``harness.bounded`` does not start and stop
    it for every input; the bound is still measured per input (peak over what came before)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    yield
    if started:
        tracemalloc.stop()

_CONTROL = st.integers(0, 255).map(lambda b: bytes([b]))


@given(session(server_side=True))
def test_hbone_server_frames(data: bytes) -> None:
    check("hbone.server_frames", data)


@settings(max_examples=300)
@given(_CONTROL, st.binary(max_size=256), st.booleans())
def test_hbone_server_raw_bytes(control: bytes, data: bytes, with_start: bool) -> None:
    check("hbone.server_frames", control + (client_start() if with_start else b"") + data)


@settings(max_examples=300)
@given(_CONTROL, st.binary(max_size=256), st.booleans())
def test_hbone_client_raw_bytes(control: bytes, data: bytes, with_start: bool) -> None:
    check("hbone.client_frames", control + (server_start() if with_start else b"") + data)


@given(session(server_side=False))
def test_hbone_client_frames(data: bytes) -> None:
    check("hbone.client_frames", data)
