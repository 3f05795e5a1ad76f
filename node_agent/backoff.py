"""Exponential backoff with full jitter for reconnect loops (controller stream, ztunnel socket)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``next()`` returns the next delay: uniform in ``[base, min(cap, base*2**n)]``."""

    def __init__(
        self,
        base: float = 0.1,
        cap: float = 10.0,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._base, self._cap, self._rand = base, cap, rand
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._cap, self._base * (2 ** min(self._attempt, 32)))
        self._attempt += 1
        return self._rand(self._base, ceiling)
