"""The machinery shared by the fuzz tier (``tests/fuzz``) and the corpus replay (unit tier).

A *target* feeds one input (bytes) to one parser that faces the network or a user and checks
what must hold for every input, valid or not:

* the only exception that may leave the parser is the module's own error type (the target
  catches exactly that one, and anything else escapes as a failure);
* the parser finishes: :func:`bounded` interrupts an input that runs longer than its CPU-time
  deadline (a loop that does not consume input) with :class:`Hang`;
* the parser's memory stays bounded: the peak of Python allocations while the input runs, over
  what was allocated before it, must stay under the target's limit (:class:`Bloat` otherwise).

Targets register themselves with :func:`target` in the modules of ``tests/fuzz/targets/``,
which :func:`load_targets` imports. The fuzz tier drives them with ``hypothesis`` strategies;
the corpus replay (``tests/unit/test_corpus.py``) runs every file under
``tests/corpus/<target name>/`` through the same target, so an input that once broke
something keeps being checked on every run of the unit tier.

The deadline is CPU time (``ITIMER_PROF``), not wall time: on a shared machine wall time is
noise, and a parser that spins burns CPU. (SIGALRM is left to pytest-timeout.)
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import signal
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

#: a generous CPU-time budget for one input: the parsers take microseconds to milliseconds
DEFAULT_DEADLINE = 2.0
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class Hang(AssertionError):
    """An input ran past its CPU-time deadline."""


class Bloat(AssertionError):
    """An input made the parser allocate more than its memory bound."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    deadline: float
    max_bytes: int


TARGETS: dict[str, Target] = {}


def target(
    name: str, *, deadline: float = DEFAULT_DEADLINE, max_bytes: int = DEFAULT_MAX_BYTES
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Register ``fn(data)`` as the target ``name`` (also the corpus folder's name)."""

    def register(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} registered twice")
        TARGETS[name] = Target(name, fn, deadline, max_bytes)
        return fn

    return register


def load_targets() -> dict[str, Target]:
    """Import every module of ``tests.fuzz.targets`` (each registers its targets)."""
    package = importlib.import_module("tests.fuzz.targets")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"tests.fuzz.targets.{info.name}")
    return TARGETS


def _on_deadline(signum: int, frame: FrameType | None) -> None:
    raise Hang("the input ran past its CPU-time deadline: a loop that does not make progress?")


@contextlib.contextmanager
def bounded(deadline: float, max_bytes: int) -> Iterator[None]:
    """Run the body under a CPU-time deadline and a bound on its peak Python allocations."""
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    previous = signal.signal(signal.SIGPROF, _on_deadline)
    signal.setitimer(signal.ITIMER_PROF, deadline)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        _, peak = tracemalloc.get_traced_memory()
        if started_tracing:
            tracemalloc.stop()
    grown = peak - before
    if grown > max_bytes:
        raise Bloat(f"the input made the parser allocate {grown} bytes (bound {max_bytes})")


def check(name: str, data: bytes) -> None:
    """Run one input through the target ``name`` under its bounds."""
    t = TARGETS[name]
    with bounded(t.deadline, t.max_bytes):
        t.run(data)


def corpus_files() -> list[tuple[str, Path]]:
    """(target name, file) for every corpus input, sorted."""
    out: list[tuple[str, Path]] = []
    if CORPUS.is_dir():
        for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
            for f in sorted(p for p in folder.iterdir() if p.is_file()):
                out.append((folder.name, f))
    return out
