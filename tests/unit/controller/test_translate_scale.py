"""The synthetic cluster of ``bench/translate.py`` translates cleanly, and service endpoint
selection (indexed by namespace and label) picks exactly the pods a full scan would."""

from __future__ import annotations

import pytest

from bench.translate import cluster, measure
from controller.translate import translate


def test_bench_cluster_translates_with_ten_endpoints_per_service() -> None:
    parse_s, translate_s, workloads, endpoints = measure(500, runs=1)
    assert (workloads, endpoints) == (500, 500)
    assert parse_s > 0 and translate_s > 0
    with pytest.raises(ValueError, match="multiple of 500"):
        cluster(510)


def test_selection_equals_a_full_scan() -> None:
    result = translate(cluster(1000))
    workloads = list(result.workloads.values())
    for svc in result.services.values():
        n = int(svc.name.removeprefix("svc"))
        want = sorted(
            (w.ip, w.key) for w in workloads
            if w.namespace == svc.namespace
            and w.label_map.get("app") == f"a{n}" and w.label_map.get("tier") == "web"
        )
        assert sorted((e.ip, e.uid) for e in svc.endpoints) == want
        assert len(want) == 10
