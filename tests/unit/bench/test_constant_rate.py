from __future__ import annotations

import math

import pytest

from bench.constant_rate import ResponseFramer, intended_ns, quantile, summarize


def test_schedule_is_fixed_by_the_rate_not_by_responses() -> None:
    assert [intended_ns(1000, i, 1000) for i in range(3)] == [1000, 1_001_000, 2_001_000]
    assert intended_ns(0, 3, 3) == 1_000_000_000


def test_quantile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert quantile(values, 0.5) == 500.0
    assert quantile(values, 0.999) == 999.0
    assert math.isnan(quantile([], 0.5))


def test_framer_counts_responses_split_anywhere() -> None:
    stream = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
              b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    for cut in range(len(stream) + 1):
        f = ResponseFramer()
        assert f.feed(stream[:cut]) + f.feed(stream[cut:]) == 2
        assert f.statuses == [200, 404]


def test_framer_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        ResponseFramer().feed(b"SSH-2.0-x\r\n\r\n")


def test_summary_counts_only_what_it_measured() -> None:
    s = summarize([1000 * v for v in range(1, 101)], rate=100, seconds=1, connections=2,
                  sent=120, errors=0, non_2xx=0, elapsed_s=1.2)
    assert (s.counted, s.p50_us, s.p99_us, s.max_us) == (100, 50.0, 99.0, 100.0)
    assert s.achieved_rate == pytest.approx(100.0)
