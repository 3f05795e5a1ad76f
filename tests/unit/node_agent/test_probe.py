"""The agent's liveness/readiness probe (node_agent.probe)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from node_agent.probe import main, problems

NOW = 1_000_000.0


def doc(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "updated": NOW - 2,
        "ztunnel": {"connected": True, "lastError": None},
        "kubernetes": {"synced": True, "cniInstalled": True},
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("d", "ready", "want"),
    [
        (doc(), True, []),
        (doc(updated=NOW - 31), False, ["last written 31s ago"]),
        (doc(ztunnel={"connected": False, "lastError": "refused"}), False, []),
        (doc(ztunnel={"connected": False, "lastError": "refused"}), True,
         ["not connected (refused)"]),
        (doc(kubernetes={"synced": False, "cniInstalled": False}), True,
         ["not synced", "not chained"]),
        (doc(kubernetes=None), True, []),  # local mode: no Kubernetes section
        ({"ztunnel": {}}, False, ["no 'updated' time"]),
    ],
)
def test_problems(d: dict[str, object], ready: bool, want: list[str]) -> None:
    got = problems(d, NOW, 30.0, ready)
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert w in g


def test_main_reads_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "status.json"
    assert main([str(f)]) == 1
    assert "cannot read" in capsys.readouterr().err
    f.write_text(json.dumps({**doc(), "updated": time.time()}))
    assert main(["--ready", str(f)]) == 0
    f.write_text("[]")
    assert main([str(f)]) == 1
