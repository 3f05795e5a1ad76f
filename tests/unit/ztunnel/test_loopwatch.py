"""The event-loop watchdog: lag measured from its own ticks, a held loop counted, logged with the
culprit's stack while it holds the loop, and the sampler thread gone after the task ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import pytest
from prometheus_client import generate_latest

from ztunnel.loopwatch import LoopWatchdog, lag
from ztunnel.metrics import Metrics


@pytest.mark.parametrize(
    ("expected", "woke", "want"),
    [(10.0, 10.0, 0.0), (10.0, 10.25, 0.25), (10.0, 9.9, 0.0)],
)
def test_lag_is_lateness_never_negative(expected: float, woke: float, want: float) -> None:
    assert lag(expected, woke) == pytest.approx(want)


@pytest.mark.parametrize(("interval", "threshold"), [(0, 0.1), (0.05, 0), (-1, 0.1)])
def test_bad_settings_are_refused(interval: float, threshold: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopWatchdog(Metrics(), interval=interval, stall_threshold=threshold)


def hold_the_loop_for_a_while() -> None:
    """The culprit the log must name: a synchronous callback that keeps the loop."""
    time.sleep(0.4)  # the held loop is what this test is about


async def test_a_held_loop_is_measured_counted_and_its_culprit_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    dog = LoopWatchdog(metrics, interval=0.02, stall_threshold=0.1)
    caplog.set_level(logging.WARNING, logger="ztunnel.loopwatch")
    task = asyncio.create_task(dog.run(), name="loopwatch-test")
    try:
        await asyncio.sleep(0.1)  # a few normal ticks first
        assert dog.stalls == 0
        asyncio.get_running_loop().call_soon(hold_the_loop_for_a_while)
        deadline = time.monotonic() + 5
        while dog.stalls == 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - a poll
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert dog.stalls == 1
    assert dog.max_lag >= 0.3
    text = generate_latest(metrics.registry).decode()
    assert "nodemesh_ztunnel_event_loop_stalls_total 1.0" in text
    max_line = next(line for line in text.splitlines()
                    if line.startswith("nodemesh_ztunnel_event_loop_lag_max_seconds "))
    assert float(max_line.split()[1]) >= 0.3
    stacks = [r.getMessage() for r in caplog.records if "event=loop_stall_stack" in r.getMessage()]
    assert len(stacks) == 1, stacks
    assert "hold_the_loop_for_a_while" in stacks[0]
    assert any("event=loop_stall lag_ms=" in r.getMessage() for r in caplog.records)
    assert not any(t.name == "ztunnel-loopwatch" for t in threading.enumerate())


async def test_an_idle_loop_shows_no_stall() -> None:
    metrics = Metrics()
    dog = LoopWatchdog(metrics, interval=0.01, stall_threshold=0.5)
    task = asyncio.create_task(dog.run(), name="loopwatch-idle")
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert dog.stalls == 0
    assert dog.max_lag < 0.5
