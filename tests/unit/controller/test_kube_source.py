"""KubeSource through the real ``kubernetes`` client against the fake API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.kube.client import KubeClient
from controller.kube.source import KubeSource
from controller.localsource import LocalSource
from controller.metrics import Metrics
from controller.translate import Translation
from tests.fakes.kubeapi import FakeKubeApi

from .kubehelpers import CLUSTER_YAML, eventually, fake_api, fixed_backoff, kube_client


class Sink:
    def __init__(self) -> None:
        self.results: list[Translation] = []

    def __call__(self, t: Translation) -> None:
        self.results.append(t)

    @property
    def last(self) -> Translation:
        return self.results[-1]


@dataclass
class Running:
    api: FakeKubeApi
    source: KubeSource
    sink: Sink
    metrics: Metrics
    client: KubeClient


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeApi]:
    async with fake_api(bookmark_interval=0.2) as api:
        yield api


@pytest.fixture
async def running(fake: FakeKubeApi, tmp_path: Path) -> AsyncIterator[Running]:
    fake.load_yaml(CLUSTER_YAML)
    sink, metrics = Sink(), Metrics()
    client = kube_client(fake, tmp_path / "kubeconfig")
    source = KubeSource(
        client,
        "cluster.local",
        sink,
        metrics,
        watch_timeout=2,
        backoff=fixed_backoff(0.5),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop), name="kube-source-under-test")
    try:
        await eventually(lambda: source.loaded or task.done())
        yield Running(fake, source, sink, metrics, client)
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 10)
        stopped_in = time.monotonic() - started
        client.close()
        assert stopped_in < 2.0, f"stopping took {stopped_in:.1f}s"


def local_translation(tmp_path: Path) -> Translation:
    config = tmp_path / "config"
    config.mkdir()
    (config / "cluster.yaml").write_text(CLUSTER_YAML)
    sink = Sink()
    LocalSource(config, "cluster.local", sink, Metrics()).poll_once()
    return sink.last


def lists_of(api: FakeKubeApi, path: str) -> list[dict[str, str]]:
    return [r.query for r in api.requests if r.path == path and r.query.get("watch") != "true"]


def watches_of(api: FakeKubeApi, path: str) -> list[dict[str, str]]:
    return [r.query for r in api.requests if r.path == path and r.query.get("watch") == "true"]


async def test_same_yaml_gives_the_same_mesh_model_as_the_local_source(
    running: Running, tmp_path: Path
) -> None:
    local = local_translation(tmp_path)
    kube = running.sink.last
    assert not local.errors and not kube.errors, (local.errors, kube.errors)
    assert kube.workloads == local.workloads
    assert kube.services == local.services
    assert kube.authorization_policies == local.authorization_policies
    assert kube.peer_authentications == local.peer_authentications
    # what the YAML means, so the equality is not of two empty models
    assert {w.name for w in kube.workloads.values()} == {"web-1", "web-2", "db-1"}
    assert [e.ip.exploded for e in kube.services["shop/db"].endpoints] == ["10.78.2.3"]
    assert len(kube.services["shop/web"].endpoints) == 2
    assert set(kube.authorization_policies) == {"shop/web-allow"}


async def test_initial_sync_is_one_translation_and_status_is_per_resource(
    running: Running,
) -> None:
    assert len(running.sink.results) == 1
    status = running.source.status()
    assert status["source"] == "kubernetes"
    resources = status["resources"]
    assert set(resources) == {
        "namespaces",
        "pods",
        "services",
        "serviceaccounts",
        "endpointslices",
        "authorizationpolicies",
        "peerauthentications",
    }
    assert all(r["synced"] and r["resourceVersion"] for r in resources.values())
    assert resources["pods"]["objects"] == 4


async def test_changes_are_watched(running: Running) -> None:
    api, sink = running.api, running.sink
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-3",
                "namespace": "shop",
                "uid": "u-web-3",
                "labels": {"app": "web"},
            },
            "spec": {
                "nodeName": "node-1",
                "serviceAccountName": "web",
                "containers": [{"name": "a", "ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {"podIP": "10.78.1.3"},
        }
    )
    await eventually(lambda: "u-web-3" in sink.last.workloads)
    await eventually(lambda: len(sink.last.services["shop/web"].endpoints) == 3)
    api.delete("Pod", "shop", "web-3")
    await eventually(lambda: "u-web-3" not in sink.last.workloads)
    api.delete("security.nodemesh.io/v1/AuthorizationPolicy", "shop", "web-allow")
    await eventually(lambda: not sink.last.authorization_policies)
    # an invalid change is reported and the last good version stays
    bad = api.get_object("Service", "shop", "web")
    assert bad is not None
    bad["spec"]["ports"][0]["port"] = 0
    api.apply(bad)
    await eventually(lambda: sink.last.errors)
    (err,) = sink.last.errors
    assert err.source == "kubernetes:Service/shop/web" and err.field == "spec.ports[0].port"
    assert sink.last.services["shop/web"].ports[0].port == 80


async def test_burst_of_changes_is_debounced(running: Running) -> None:
    before = len(running.sink.results)
    for i in range(200):
        running.api.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": f"sa-{i}", "namespace": "shop"},
            }
        )
    await eventually(
        lambda: running.source.status()["resources"]["serviceaccounts"]["objects"] == 201
    )
    await asyncio.sleep(0.2)
    translations = len(running.sink.results) - before
    assert 1 <= translations < 50, translations


async def test_resume_after_watches_close_without_relist(running: Running) -> None:
    api = running.api
    await api.wait_for_watches(7)
    lists_before = len(lists_of(api, "/api/v1/pods"))
    status_rv = running.source.status()["resources"]["pods"]["resourceVersion"]
    api.clear_requests()
    assert api.close_watches() >= 7
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-9",
                "namespace": "shop",
                "uid": "u-web-9",
                "labels": {"app": "web"},
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}]},
            "status": {"podIP": "10.78.1.9"},
        }
    )
    await eventually(lambda: "u-web-9" in running.sink.last.workloads)
    assert lists_before == 1
    assert lists_of(api, "/api/v1/pods") == []  # resumed, not relisted
    resumed = watches_of(api, "/api/v1/pods")
    assert resumed and all(int(q["resourceVersion"]) >= int(status_rv) for q in resumed)
    assert all(q["allowWatchBookmarks"] == "true" for q in resumed)
    assert running.metrics.watch_restarts.labels("pods")._value.get() >= 1
    assert running.metrics.watch_relists.labels("pods")._value.get() == 1


async def test_bookmarks_advance_the_resume_point(running: Running) -> None:
    api = running.api
    rv0 = int(running.source.status()["resources"]["pods"]["resourceVersion"])
    # a change elsewhere moves the global resourceVersion; pods learn it from bookmarks only
    api.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "shop"}}
    )
    await eventually(
        lambda: int(running.source.status()["resources"]["pods"]["resourceVersion"]) > rv0
    )


async def test_expired_resource_version_relists_after_backoff(running: Running) -> None:
    api = running.api
    await api.wait_for_watches(7)
    # the pods watch cannot come back at once (500, then a 0.5 s backoff); meanwhile a change
    # happens and the history is dropped, so its resume point is too old: 410 → relist
    api.fail_next("GET", "/api/v1/pods", 500)
    api.clear_requests()
    api.close_watches()
    await eventually(lambda: running.metrics.watch_errors.labels("pods")._value.get() == 1)
    failed_at = time.monotonic()
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "late", "namespace": "shop", "uid": "u-late"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}]},
            "status": {"podIP": "10.78.1.20"},
        }
    )
    api.compact()
    await eventually(lambda: "u-late" in running.sink.last.workloads)
    relisted = lists_of(api, "/api/v1/pods")
    assert len(relisted) == 1
    assert running.metrics.watch_relists.labels("pods")._value.get() == 2
    assert time.monotonic() - failed_at >= 0.4  # it waited for the backoff
    pods = [r for r in api.requests if r.path == "/api/v1/pods"]
    # the failed watch, the watch that got the 410 ERROR event, then the list
    assert [r.query.get("watch") for r in pods[:3]] == ["true", "true", None]
    assert running.source.status()["resources"]["pods"]["errors"] == 1


async def test_list_errors_back_off_and_readiness_waits_for_every_kind(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.load_yaml(CLUSTER_YAML)
    fake.fail_next("GET", "/apis/security.nodemesh.io/v1/peerauthentications", 500, count=2)
    sink, metrics = Sink(), Metrics()
    client = kube_client(fake, tmp_path / "kubeconfig")
    source = KubeSource(
        client, "cluster.local", sink, metrics, watch_timeout=2, backoff=fixed_backoff(0.3)
    )
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(source.run(stop))
    try:
        await eventually(lambda: source.status()["resources"]["pods"]["synced"])
        assert not source.loaded and not sink.results  # one kind has not listed yet
        await eventually(lambda: source.loaded)
        assert time.monotonic() - started >= 0.6  # two backoffs of 0.3 s
        assert metrics.watch_errors.labels("peerauthentications")._value.get() == 2
        status = source.status()["resources"]["peerauthentications"]
        assert status["errors"] == 2 and status["synced"]
        assert len(sink.results) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        client.close()


async def test_unauthorized_client_keeps_retrying_and_says_why(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    sink, metrics = Sink(), Metrics()
    client = kube_client(fake, tmp_path / "kubeconfig", token="not-registered-token")
    source = KubeSource(
        client, "cluster.local", sink, metrics, watch_timeout=2, backoff=fixed_backoff(0.1)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await eventually(lambda: metrics.watch_errors.labels("pods")._value.get() >= 2)
        assert not source.loaded
        assert "401" in str(source.status()["resources"]["pods"]["lastError"])
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        client.close()


async def test_malformed_event_retries_from_the_same_point(running: Running) -> None:
    """A malformed event from the server is counted, and the watch resumes where it was."""
    api = running.api
    await api.wait_for_watches(7)
    rv = running.source.status()["resources"]["pods"]["resourceVersion"]
    original = running.client.watch

    def broken_once(resource: Any, resource_version: str, timeout: int) -> Any:
        stream = original(resource, resource_version, timeout)
        if resource.plural == "pods" and not calls:
            calls.append(resource_version)

            class Broken:
                def __iter__(self) -> Any:
                    yield {"type": "ADDED", "object": {"metadata": {"name": "no-rv"}}}

                def interrupt(self) -> None:
                    stream.interrupt()

                def close(self) -> None:
                    stream.close()

            return Broken()
        return stream

    calls: list[str] = []
    running.client.watch = broken_once  # type: ignore[method-assign]
    api.close_watches()
    await eventually(lambda: running.metrics.watch_errors.labels("pods")._value.get() == 1)
    status = running.source.status()["resources"]["pods"]
    assert "resourceVersion" in str(status["lastError"])
    assert int(status["resourceVersion"]) >= int(rv) and status["lists"] == 1
    assert calls == [rv] or int(calls[0]) >= int(rv)
