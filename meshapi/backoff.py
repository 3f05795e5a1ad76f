"""Exponential backoff with full jitter, for every reconnect loop (discovery streams, the
agent's ztunnel socket). Pure: the random source is injectable."""

from __future__ import annotations

import random


class Backoff:
    """``next()``: uniform in ``[0, min(cap, base * 2**attempt)]``; ``reset()`` after success."""

    def __init__(
        self, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap (got base={base}, cap={cap})")
        self._base = base
        self._cap = cap
        self._attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next(self) -> float:
        delay = min(self._cap, self._base * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(0, delay)

    def reset(self) -> None:
        self._attempt = 0
