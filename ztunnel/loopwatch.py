"""The event-loop watchdog: the ztunnel serves every pod of the node from one loop, so a callback
that holds it holds the whole node.

Two halves:

* a task on the loop (:meth:`LoopWatchdog.run`) sleeps ``interval`` seconds at a time and
  measures how late it woke: that lateness is the loop's lag, exported as
  ``nodemesh_ztunnel_event_loop_lag_seconds`` (last tick) and ``…_lag_max_seconds``; a tick more
  than ``stall_threshold`` late counts in ``nodemesh_ztunnel_event_loop_stalls_total``;
* a daemon thread (:meth:`LoopWatchdog.start_sampler`) that is off the data path and touches no
  asyncio object: while the loop has not ticked for ``stall_threshold`` it logs, once per stall,
  the stack of the loop's thread, so the log names the culprit while it still holds the loop
  (afterwards the task logs how long the stall lasted).

Invariants: the thread only reads two floats written by the task and ``sys._current_frames()``;
it never blocks the loop (no lock is shared with it) and it exits when :meth:`stop` is called.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import Final

from ztunnel.metrics import Metrics

log = logging.getLogger("ztunnel.loopwatch")

DEFAULT_INTERVAL: Final = 0.05
#: a callback holding the loop longer than this is a stall (logged, counted)
DEFAULT_STALL_THRESHOLD: Final = 0.1
#: frames of the loop thread's stack put into the log line
_STACK_FRAMES: Final = 8


def lag(expected_wake: float, woke: float) -> float:
    """How late a timer fired (never negative: an early wake is no lag)."""
    return max(0.0, woke - expected_wake)


class LoopWatchdog:
    def __init__(
        self,
        metrics: Metrics,
        *,
        interval: float = DEFAULT_INTERVAL,
        stall_threshold: float = DEFAULT_STALL_THRESHOLD,
    ) -> None:
        if interval <= 0 or stall_threshold <= 0:
            raise ValueError("the watchdog's interval and stall threshold must be positive")
        self._metrics = metrics
        self.interval = interval
        self.stall_threshold = stall_threshold
        self.max_lag = 0.0
        self.stalls = 0
        #: written by the loop's task, read by the sampler thread
        self._last_tick = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def run(self) -> None:
        """Measure the loop's lag until cancelled."""
        self._loop_thread = threading.get_ident()
        self._last_tick = time.monotonic()
        self.start_sampler()
        try:
            while True:
                expected = time.monotonic() + self.interval
                await asyncio.sleep(self.interval)
                now = time.monotonic()
                self._last_tick = now
                self.observe(lag(expected, now))
        finally:
            self.stop()

    def observe(self, seconds: float) -> None:
        self._metrics.loop_lag.set(seconds)
        if seconds > self.max_lag:
            self.max_lag = seconds
            self._metrics.loop_lag_max.set(seconds)
        if seconds > self.stall_threshold:
            self.stalls += 1
            self._metrics.loop_stalls.inc()
            log.warning(
                "event=loop_stall lag_ms=%.1f the event loop was held %.0f ms by one callback; "
                "every pod of this node waited (the stack logged while it was held names the code)",
                seconds * 1000, seconds * 1000)

    # --- the sampler thread -------------------------------------------------------------

    def start_sampler(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="ztunnel-loopwatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def _sample(self) -> None:
        reported_tick = -1.0
        period = min(self.interval, self.stall_threshold) / 2
        while not self._stop.wait(period):
            tick = self._last_tick
            held = time.monotonic() - tick - self.interval
            if held > self.stall_threshold and tick != reported_tick:
                reported_tick = tick
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame, limit=_STACK_FRAMES)) if frame else ""
                log.warning("event=loop_stall_stack held_ms=%.0f the event loop is held now, "
                            "in:\n%s", held * 1000, stack.rstrip())
