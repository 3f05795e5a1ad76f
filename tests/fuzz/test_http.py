"""The fuzz tier for the HTTP path (issue 10): hypothesis drives the targets of
``tests/fuzz/targets/http.py`` with near-valid messages, their mutations and raw bytes; each
input runs under the target's CPU-time deadline and memory bound (``tests/fuzz/harness.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.fuzz.targets.http import mutated, near_valid_request, near_valid_response

pytestmark = pytest.mark.fuzz

#: the first byte of an input chooses how it is split into reads (see ``splits``)
_SPLIT = st.integers(0, 255).map(lambda b: bytes([b]))


@given(_SPLIT, mutated(near_valid_request()))
def test_http1_request_near_valid(split: bytes, message: bytes) -> None:
    check("http1.request", split + message)


@given(st.binary(max_size=512))
def test_http1_request_raw_bytes(data: bytes) -> None:
    check("http1.request", data)


@given(_SPLIT, mutated(near_valid_response()))
def test_http1_response_near_valid(split: bytes, message: bytes) -> None:
    check("http1.response", split + message)


@given(_SPLIT, mutated(near_valid_request()))
def test_l7_splice_near_valid(split: bytes, message: bytes) -> None:
    check("l7.splice", split + message)


_PATH_PARTS = st.sampled_from(["/", ".", "..", "%2e", "%2F", "%5c", "%zz", "%41", "\\", "a",
                               "%25", "?", "~", "%C3%a9", "%", "%2"])


@given(st.lists(_PATH_PARTS, max_size=40).map("".join))
def test_httppath(path: str) -> None:
    check("httppath", path.encode("latin-1", "replace"))
