"""Replays every input that once broke a parser (``tests/corpus/<target>/``) through its fuzz
target, under the same deadline and memory bound as the fuzz tier (``tests/fuzz/harness.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import check, corpus_files, load_targets

TARGETS = load_targets()
FILES = corpus_files()


@pytest.mark.parametrize(("name", "path"), FILES, ids=[f"{n}/{p.name}" for n, p in FILES])
def test_corpus_input_is_handled(name: str, path: Path) -> None:
    assert name in TARGETS, f"corpus folder {name!r} names no fuzz target"
    check(name, path.read_bytes())



def test_corpus_is_not_empty() -> None:
    assert FILES, "tests/corpus/ holds no input"
