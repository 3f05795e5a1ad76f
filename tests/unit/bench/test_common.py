from __future__ import annotations

import math

from bench.common import median_or_nan, percentile, ratio


def test_median_refuses_to_hide_a_failed_run() -> None:
    assert median_or_nan([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median_or_nan([1.0, math.nan, 2.0]))
    assert math.isnan(median_or_nan([]))


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_ratio() -> None:
    assert ratio(1.0, 4.0) == 0.25
    for v, b in ((math.nan, 1.0), (1.0, math.nan), (1.0, 0.0)):
        assert math.isnan(ratio(v, b))
