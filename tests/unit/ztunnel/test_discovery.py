from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshapi.discovery import Delta, Snapshot
from tests.unit.ztunnel.helpers import service, workload
from ztunnel.discovery import DiscoveryClient
from ztunnel.errors import DiscoveryError
from ztunnel.metrics import Metrics
from ztunnel.seams import MeshView

A = workload("a", "10.78.1.2")
B = workload("b", "10.78.1.3")


def line(msg: Snapshot | Delta) -> bytes:
    return json.dumps(msg.to_wire()).encode()


def client(view: MeshView) -> DiscoveryClient:
    return DiscoveryClient(controller="127.0.0.1:15012", ca_root=Path("/nonexistent"),
                           token_file=Path("/nonexistent"), view=view, metrics=Metrics())


def test_snapshot_then_delta_rebuilds_the_index() -> None:
    view = MeshView()
    c = client(view)
    c.apply_line(line(Snapshot("e1", 1, (A,), ())))
    assert c.synced.is_set()
    assert set(view.index.by_uid) == {A.uid}
    svc = service("s", "10.96.0.10", [(80, 8080)], [B])
    c.apply_line(line(Delta("e1", 2, upsert_workloads=(B,), upsert_services=(svc,))))
    assert set(view.index.by_uid) == {A.uid, B.uid}
    assert view.index.by_vip[svc.vip] == svc  # type: ignore[index]
    assert view.state.resume_params() == {"epoch": "e1", "version": "2"}


def test_out_of_order_delta_keeps_the_view_but_drops_the_resume_point() -> None:
    view = MeshView()
    c = client(view)
    c.apply_line(line(Snapshot("e1", 1, (A,), ())))
    with pytest.raises(DiscoveryError):
        c.apply_line(line(Delta("e1", 5, upsert_workloads=(B,))))
    assert set(view.index.by_uid) == {A.uid}  # last good config keeps serving
    assert view.state.resume_params() == {}


@pytest.mark.parametrize("raw", [b"{", b'{"type":"nope","epoch":"e","version":1}', b"[]"])
def test_invalid_lines_raise(raw: bytes) -> None:
    with pytest.raises(DiscoveryError):
        client(MeshView()).apply_line(raw)
