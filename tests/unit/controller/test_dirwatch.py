"""inotify on the config directory: a rename into place, a write closed, a delete each wake the
watcher once per burst; a file still being written does not; a missing directory says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.dirwatch import WatchUnavailable, open_watch


async def test_rename_into_place_wakes_the_watcher(tmp_path: Path) -> None:
    watch = open_watch(tmp_path)
    try:
        assert not await watch.wait(0.05)
        tmp = tmp_path / ".new.tmp"
        tmp.write_text("kind: Namespace\n")
        assert await watch.wait(2.0)  # the temporary file was closed after writing
        os.replace(tmp, tmp_path / "ns.yaml")
        assert await watch.wait(2.0)
        assert not await watch.wait(0.05), "one burst is one wake-up"
        (tmp_path / "ns.yaml").unlink()
        assert await watch.wait(2.0)
    finally:
        watch.close()


async def test_a_file_being_written_is_announced_only_when_closed(tmp_path: Path) -> None:
    watch = open_watch(tmp_path)
    try:
        with open(tmp_path / "pod.yaml", "w") as f:  # noqa: ASYNC230 - the point of the test
            f.write("kind: Pod\n")
            f.flush()
            assert not await watch.wait(0.1), "a half-written file must not trigger a rescan"
        assert await watch.wait(2.0)
    finally:
        watch.close()


async def test_many_events_drain_in_one_wakeup(tmp_path: Path) -> None:
    watch = open_watch(tmp_path)
    try:
        for i in range(500):
            (tmp_path / f"f{i}.yaml").write_text("x")
        assert await watch.wait(2.0)
        assert not await watch.wait(0.05)
        assert watch.wakeups >= 1
    finally:
        watch.close()


async def test_a_missing_directory_cannot_be_watched(tmp_path: Path) -> None:
    with pytest.raises(WatchUnavailable, match="inotify_add_watch"):
        open_watch(tmp_path / "missing")
