from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import yaml

from controller.localsource import LocalSource
from controller.metrics import Metrics
from controller.translate import Translation

from .helpers import pod, service


class Sink:
    def __init__(self) -> None:
        self.results: list[Translation] = []

    def __call__(self, t: Translation) -> None:
        self.results.append(t)

    @property
    def last(self) -> Translation:
        return self.results[-1]


def write(path: Path, *docs: object) -> None:
    path.write_text(yaml.safe_dump_all(docs))


def test_watch_reads_multidoc_and_only_works_on_change(tmp_path: Path) -> None:
    sink, metrics = Sink(), Metrics()
    src = LocalSource(tmp_path, "cluster.local", sink, metrics)
    write(tmp_path / "a.yaml", pod(uid="u1"), service())
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.yaml").write_text("{{{")
    assert src.poll_once() and src.loaded
    assert set(sink.last.workloads) == {"u1"} and set(sink.last.services) == {"default/web"}
    assert not src.poll_once()  # nothing changed: no work
    write(tmp_path / "b.yml", pod("web-2", uid="u2", ip="10.78.1.3"))
    assert src.poll_once()
    assert set(sink.last.workloads) == {"u1", "u2"}
    (tmp_path / "b.yml").unlink()
    assert src.poll_once() and set(sink.last.workloads) == {"u1"}


def test_malformed_yaml_keeps_last_good_and_is_counted(tmp_path: Path) -> None:
    sink, metrics = Sink(), Metrics()
    src = LocalSource(tmp_path, "cluster.local", sink, metrics)
    write(tmp_path / "a.yaml", pod(uid="u1"))
    src.poll_once()
    good = sink.last.workloads
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n")
    src.poll_once()
    assert sink.last.workloads == good
    (err,) = src.errors
    assert err.source == str(tmp_path / "a.yaml") and "line 4" in err.object
    assert "malformed YAML" in err.message
    assert metrics.config_errors._value.get() == 1
    # the same error on a later poll is not counted again
    os.utime(tmp_path / "a.yaml", ns=(1, 1))
    src.poll_once()
    assert metrics.registry.get_sample_value("nodemesh_controller_config_rejections_total") == 1
    # a bad field in another object
    write(tmp_path / "a.yaml", pod(uid="u1"), {**service(), "spec": {"ports": [{"port": "x"}]}})
    src.poll_once()
    (err,) = src.errors
    assert (err.object, err.field) == ("Service default/web", "spec.ports[0].port")
    assert metrics.registry.get_sample_value("nodemesh_controller_config_rejections_total") == 2
    write(tmp_path / "a.yaml", pod(uid="u1"))
    src.poll_once()
    assert src.errors == () and metrics.config_errors._value.get() == 0


def test_duplicate_across_files(tmp_path: Path) -> None:
    sink = Sink()
    src = LocalSource(tmp_path, "cluster.local", sink, Metrics())
    write(tmp_path / "b.yaml", pod(uid="u1"))
    src.poll_once()
    write(tmp_path / "a.yaml", pod(uid="u1", ip="10.78.1.66"))
    src.poll_once()
    (err,) = src.errors
    assert err.source.endswith("a.yaml") and "b.yaml" in err.message
    assert str(sink.last.workloads["u1"].ip) == "10.78.1.2"


async def _until(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def test_run_sees_a_change_at_once_with_inotify_not_at_the_next_poll(
        tmp_path: Path) -> None:
    """The polls are a minute apart here: only inotify can make the change show in time."""
    sink = Sink()
    src = LocalSource(tmp_path, "cluster.local", sink, Metrics(), poll_interval=60.0,
                      rescan_interval=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(stop))
    try:
        assert await _until(lambda: src.loaded, 5.0)
        tmp = tmp_path / ".a.yaml.tmp"  # as meshctl apply writes: a hidden file renamed in
        write(tmp, pod(uid="u1"))
        os.replace(tmp, tmp_path / "a.yaml")
        assert await _until(lambda: bool(sink.results) and "u1" in sink.last.workloads, 2.0)
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task  # stop wakes the watcher: no wait for the rescan interval


def test_oversized_or_unreadable_value_keeps_last_good(tmp_path: Path) -> None:
    from controller import yamlload

    sink, metrics = Sink(), Metrics()
    src = LocalSource(tmp_path, "cluster.local", sink, metrics)
    write(tmp_path / "a.yaml", pod(uid="u1"))
    src.poll_once()
    good = sink.last.workloads
    # the timestamp raised ValueError out of poll_once: the watch loop died
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"
                                     "status: {startTime: 2024-13-45}\n")
    src.poll_once()
    assert sink.last.workloads == good
    (err,) = src.errors
    assert err.source == str(tmp_path / "a.yaml") and "line 4" in err.object
    assert "month must be in 1..12" in err.message
    (tmp_path / "a.yaml").write_text("#" * (yamlload.MAX_YAML_BYTES + 1))
    src.poll_once()
    assert sink.last.workloads == good
    (err,) = src.errors
    assert err.source == str(tmp_path / "a.yaml") and "more than the" in err.message
