"""The node agent's Kubernetes I/O (node_agent.kube.api) through the real ``kubernetes`` client
against the fake API server: list+watch of the node's pods, resume, relist on 410, backoff, the
redirection annotation and reads, with the agent's least-privilege token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshapi.backoff import Backoff
from meshapi.kubewatch import ObjectKey, Reflector
from node_agent.kube.api import KubeError, NodeApi, Watch, api_client
from tests.fakes.kubeapi import FakeKubeApi

TOKEN = "node-agent-token-for-tests-0123456789"
#: what the DaemonSet's ClusterRole grants the agent (daemonset/); nothing more is needed
AGENT_RBAC = [
    ("get", "pods"), ("list", "pods"), ("watch", "pods"), ("patch", "pods"),
    ("get", "namespaces"), ("list", "namespaces"), ("watch", "namespaces"),
    ("get", "daemonsets.apps"),
]


def pod(name: str, node: str, ns: str = "apps", ip: str = "10.1.0.5") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": node, "serviceAccountName": "web",
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip},
    }


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi(bookmark_interval=0.1) as api:
        api.add_token(TOKEN, username="system:serviceaccount:nodemesh-system:nodemesh-node",
                      allow=AGENT_RBAC)
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
        yield api


class Stores:
    def __init__(self) -> None:
        self.latest: Mapping[ObjectKey, object] = {}
        self.changed = asyncio.Event()

    def __call__(self, store: Mapping[ObjectKey, object]) -> None:
        self.latest = store
        self.changed.set()

    async def until(self, what: str, cond: Callable[[Mapping[ObjectKey, object]], bool]) -> None:
        async with asyncio.timeout(10):
            while not cond(self.latest):
                self.changed.clear()
                await self.changed.wait()


def names(store: Mapping[ObjectKey, object]) -> set[str]:
    return {k[1] for k in store}


async def node_api(fake: FakeKubeApi, tmp_path: Path, node: str = "node-1") -> NodeApi:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", TOKEN)
    return NodeApi(await asyncio.to_thread(api_client, kubeconfig), node)


async def test_watch_follows_this_nodes_pods_resumes_and_relists(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.apply(pod("a", "node-1"))
    fake.apply(pod("other", "node-2", ip="10.2.0.5"))
    api = await node_api(fake, tmp_path)
    stores = Stores()
    watch = Watch("pods", api.pods_call(), Reflector("Pod", "v1"), stores,
                  asyncio.get_running_loop(), backoff=Backoff(base=0.05, cap=0.2), watch_seconds=5)
    watch.start()
    try:
        await stores.until("the first list", lambda s: names(s) == {"a"})
        fake.apply(pod("b", "node-1", ip="10.1.0.6"))
        await stores.until("b added", lambda s: names(s) == {"a", "b"})
        # an object that moves off the node leaves the store (the server sends DELETED)
        fake.apply(pod("b", "node-2", ip="10.1.0.6"))
        await stores.until("b gone", lambda s: names(s) == {"a"})

        # an API server restart ends the watch: we resume from our version, no new list
        lists_before = watch.relists
        await fake.wait_for_watches(1)
        fake.clear_requests()
        fake.close_watches()
        fake.apply(pod("c", "node-1", ip="10.1.0.7"))
        await stores.until("c after resume", lambda s: names(s) == {"a", "c"})
        assert watch.relists == lists_before
        resumed = [r for r in fake.requests if r.query.get("watch") in ("true", "1", "True")]
        assert resumed and resumed[0].query.get("resourceVersion") not in (None, "", "0")
        assert all(r.query.get("fieldSelector") == "spec.nodeName=node-1" for r in resumed)
        assert all(r.query.get("allowWatchBookmarks") in ("true", "True") for r in resumed)
        assert {r.token for r in fake.requests} == {TOKEN}

        # history compacted while the watch is down (the server runs on this loop, so these
        # three happen before it serves the reconnect): 410 -> a fresh list
        await fake.wait_for_watches(1)
        fake.close_watches()
        fake.delete("Pod", "apps", "a")
        fake.compact()
        await stores.until("relisted without a", lambda s: names(s) == {"c"})
        assert watch.relists == lists_before + 1

        # server errors back off and recover
        fake.fail_next("GET", "/api/v1/pods", 500, count=2)
        await fake.wait_for_watches(1)
        fake.close_watches()
        fake.apply(pod("d", "node-1", ip="10.1.0.8"))
        await stores.until("d after errors", lambda s: names(s) == {"c", "d"})
        assert watch.errors >= 2
    finally:
        await asyncio.to_thread(watch.stop)


async def test_reads_and_the_redirection_annotation(fake: FakeKubeApi, tmp_path: Path) -> None:
    fake.apply(pod("a", "node-1"))
    api = await node_api(fake, tmp_path)
    got = await asyncio.to_thread(api.get_pod, "apps", "a")
    assert got is not None and got["spec"]["nodeName"] == "node-1"
    assert await asyncio.to_thread(api.get_pod, "apps", "nope") is None
    ns = await asyncio.to_thread(api.get_namespace, "apps")
    assert ns is not None and ns["metadata"]["name"] == "apps"
    assert await asyncio.to_thread(api.get_daemonset, "nodemesh-system", "nodemesh-node") is None

    await asyncio.to_thread(api.annotate_pod, "apps", "a", "nodemesh.io/redirection", "pending")
    obj = fake.get_object("Pod", "apps", "a")
    assert obj is not None and obj["metadata"]["annotations"] == {
        "nodemesh.io/redirection": "pending"
    }
    await asyncio.to_thread(api.annotate_pod, "apps", "a", "nodemesh.io/redirection", None)
    obj = fake.get_object("Pod", "apps", "a")
    assert obj is not None and "nodemesh.io/redirection" not in (
        obj["metadata"].get("annotations") or {}
    )
    # a pod deleted meanwhile is not an error
    await asyncio.to_thread(api.annotate_pod, "apps", "gone", "nodemesh.io/redirection", "x")


async def test_forbidden_is_a_clear_error(fake: FakeKubeApi, tmp_path: Path) -> None:
    fake.restrict(TOKEN, [("list", "pods")])
    api = await node_api(fake, tmp_path)
    with pytest.raises(KubeError, match=r"403.*cannot get resource"):
        await asyncio.to_thread(api.get_pod, "apps", "a")


async def test_bad_kubeconfig_names_the_flag(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("{not: [yaml")
    with pytest.raises(KubeError, match="--kubeconfig"):
        api_client(bad)
