"""Node authentication by TokenReview: the pure decisions, the cache, and the whole flow through
the real client against the fake API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.auth import (
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    ReviewCache,
    ReviewedPod,
    ServiceAccountRef,
    TokenReviewAuthenticator,
    pod_node,
    reviewed_pod,
    token_digest,
)
from controller.errors import AuthError, AuthUnavailable
from controller.kube.client import KubeClient
from controller.kube.tokenreview import KubeTokenReviewer
from controller.metrics import Metrics
from tests.fakes.kubeapi import FakeKubeApi

from .kubehelpers import NODE_SA_USER, add_node_token, fake_api, kube_client, node_pod

NODE_SA = ServiceAccountRef("nodemesh-system", "nodemesh-node")
UID1 = "11111111-1111-4111-8111-111111111111"
UID2 = "22222222-2222-4222-8222-222222222222"
TOKEN = "node-1-projected-token-abcdefghijklmnop"


def status(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "authenticated": True,
        "user": {
            "username": NODE_SA_USER,
            "uid": "sa-uid",
            "groups": ["system:serviceaccounts"],
            "extra": {POD_NAME_EXTRA: ["agent-a"], POD_UID_EXTRA: [UID1]},
        },
        "audiences": ["nodemesh"],
    }
    base.update(overrides)
    return base


# ---- pure decisions ----------------------------------------------------------------------------


def test_service_account_ref() -> None:
    ref = ServiceAccountRef.parse("nodemesh-system:nodemesh-node")
    assert ref == NODE_SA and str(ref) == "nodemesh-system:nodemesh-node"
    assert ref.username == NODE_SA_USER
    for bad in ("nodemesh-node", ":x", "Bad_NS:x", "ns:"):
        with pytest.raises(ValueError, match="NAMESPACE:NAME"):
            ServiceAccountRef.parse(bad)


def test_reviewed_pod_accepts_a_bound_node_token() -> None:
    assert reviewed_pod(status(), "nodemesh", NODE_SA) == ReviewedPod(
        "nodemesh-system", "agent-a", UID1
    )


@pytest.mark.parametrize(
    ("review", "reason", "fragment"),
    [
        ({"user": {}, "error": "token expired"}, "unauthenticated", "token expired"),
        (
            {"user": {}, "error": 'token audiences ["x"] is invalid for the target audiences'},
            "wrong_audience",
            "audiences",
        ),
        (status(audiences=["other"]), "wrong_audience", "not 'nodemesh'"),
        (
            status(user={"username": "system:serviceaccount:shop:web", "extra": {}}),
            "wrong_service_account",
            "system:serviceaccount:shop:web",
        ),
        (status(user={"username": NODE_SA_USER}), "not_pod_bound", POD_NAME_EXTRA),
        (
            status(user={"username": NODE_SA_USER, "extra": {POD_NAME_EXTRA: ["a"]}}),
            "not_pod_bound",
            POD_UID_EXTRA,
        ),
        (
            status(
                user={
                    "username": NODE_SA_USER,
                    "extra": {POD_NAME_EXTRA: ["a", "b"], POD_UID_EXTRA: [UID1]},
                }
            ),
            "not_pod_bound",
            POD_NAME_EXTRA,
        ),
    ],
)
def test_reviewed_pod_refusals(review: dict[str, Any], reason: str, fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment) as info:
        reviewed_pod(review, "nodemesh", NODE_SA)
    assert info.value.reason == reason


def test_reviewed_pod_without_status_is_unavailable_not_refused() -> None:
    with pytest.raises(AuthUnavailable):
        reviewed_pod(None, "nodemesh", NODE_SA)


WHO = ReviewedPod("nodemesh-system", "agent-a", UID1)


def test_pod_node() -> None:
    assert pod_node(node_pod("agent-a", UID1, "node-1"), WHO, NODE_SA) == "node-1"


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (None, "unknown_pod"),
        (node_pod("agent-a", UID2, "node-1"), "uid_mismatch"),
        (node_pod("agent-a", UID1, "node-1", sa="default"), "wrong_service_account"),
        (
            {"metadata": {"uid": UID1}, "spec": {"serviceAccountName": "nodemesh-node"}},
            "unscheduled",
        ),
    ],
)
def test_pod_node_refusals(pod: Any, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        pod_node(pod, WHO, NODE_SA)
    assert info.value.reason == reason


def test_review_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    cache = ReviewCache(ttl=10, size=2, clock=lambda: now[0])
    a, b, c = token_digest("a"), token_digest("b"), token_digest("c")
    cache.put(a, "node-1")  # type: ignore[arg-type]
    cache.put(b, "node-2")  # type: ignore[arg-type]
    assert cache.get(a) == "node-1"  # a is now the most recently used
    cache.put(c, "node-3")  # type: ignore[arg-type]
    assert len(cache) == 2 and cache.get(b) is None and cache.get(a) == "node-1"
    now[0] = 10.0
    assert cache.get(a) is None and cache.get(c) is None and len(cache) == 0


def test_digest_is_not_the_token() -> None:
    assert TOKEN.encode() not in token_digest(TOKEN) and len(token_digest(TOKEN)) == 32


# ---- through the fake API server ---------------------------------------------------------------


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeKubeApi]:
    async with fake_api() as api:
        api.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nodemesh-system"}}
        )
        api.apply(node_pod("agent-a", UID1, "node-1"))
        api.apply(node_pod("agent-b", UID2, "node-2"))
        yield api


@pytest.fixture
def client(fake: FakeKubeApi, tmp_path: Path) -> KubeClient:
    return kube_client(fake, tmp_path / "kubeconfig")


def authenticator(client: KubeClient, metrics: Metrics) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(KubeTokenReviewer(client), "nodemesh", NODE_SA, metrics)


def reviews(api: FakeKubeApi) -> int:
    return sum(1 for r in api.requests if r.path.endswith("/tokenreviews"))


async def test_token_review_finds_the_node_and_caches(
    fake: FakeKubeApi, client: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    auth = authenticator(client, metrics)
    add_node_token(fake, TOKEN, "agent-a", UID1)
    add_node_token(fake, "node-2-projected-token-abcdefghijklm", "agent-b", UID2)
    try:
        assert await auth.authenticate(f"Bearer {TOKEN}") == "node-1"
        assert await auth.authenticate(f"Bearer {TOKEN}") == "node-1"
        assert reviews(fake) == 1  # the second came from the cache
        # a pod on another node authenticates as that node, never as node-1
        assert await auth.authenticate("Bearer node-2-projected-token-abcdefghijklm") == "node-2"
        assert metrics.token_reviews.labels("ok")._value.get() == 2
        assert metrics.token_reviews.labels("cached")._value.get() == 1
        assert TOKEN not in caplog.text
    finally:
        client.close()


async def test_concurrent_checks_of_one_token_share_one_review(
    fake: FakeKubeApi, client: KubeClient
) -> None:
    metrics = Metrics()
    auth = authenticator(client, metrics)
    add_node_token(fake, TOKEN, "agent-a", UID1)
    try:
        # a caller that goes away (its request was cancelled) does not stop the others' review
        first = asyncio.create_task(auth.authenticate(f"Bearer {TOKEN}"))
        await asyncio.sleep(0)
        first.cancel()
        nodes = await asyncio.gather(*(auth.authenticate(f"Bearer {TOKEN}") for _ in range(9)))
        assert nodes == ["node-1"] * 9
        assert reviews(fake) == 1
        assert metrics.token_reviews.labels("ok")._value.get() == 1
        assert metrics.token_reviews.labels("shared")._value.get() == 9
        # a refusal reaches every waiter, and is not remembered
        with pytest.raises(AuthError):
            await asyncio.gather(*(auth.authenticate("Bearer unknown-token-0123456789abcdef")
                                   for _ in range(3)))
        assert reviews(fake) == 2
        with pytest.raises(AuthError):
            await auth.authenticate("Bearer unknown-token-0123456789abcdef")
        assert reviews(fake) == 3
    finally:
        client.close()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"audiences": ("other",)}, "wrong_audience"),
        ({"pod": "agent-gone"}, "unknown_pod"),
        ({"uid": "33333333-3333-4333-8333-333333333333"}, "uid_mismatch"),
        ({"username": "system:serviceaccount:shop:web"}, "wrong_service_account"),
        ({"unregistered": True}, "unauthenticated"),
    ],
)
async def test_token_review_refusals(
    fake: FakeKubeApi, client: KubeClient, setup: dict[str, Any], reason: str
) -> None:
    metrics = Metrics()
    auth = authenticator(client, metrics)
    if not setup.get("unregistered"):
        add_node_token(
            fake,
            TOKEN,
            setup.get("pod", "agent-a"),
            setup.get("uid", UID1),
            username=setup.get("username", NODE_SA_USER),
            audiences=setup.get("audiences", ("nodemesh",)),
        )
    try:
        with pytest.raises(AuthError) as info:
            await auth.authenticate(f"Bearer {TOKEN}")
        assert info.value.reason == reason
        assert TOKEN not in str(info.value)
        assert metrics.token_reviews.labels(reason)._value.get() == 1
        with pytest.raises(AuthError):
            await auth.authenticate(f"Bearer {TOKEN}")
        assert reviews(fake) == 2  # refusals are not cached
    finally:
        client.close()


async def test_pod_of_another_service_account_on_the_node_is_refused(
    fake: FakeKubeApi, client: KubeClient
) -> None:
    # right username in the token, but the pod it names runs as someone else
    fake.apply(node_pod("impostor", UID2, "node-1", sa="default"))
    add_node_token(fake, TOKEN, "impostor", UID2)
    try:
        with pytest.raises(AuthError) as info:
            await authenticator(client, Metrics()).authenticate(f"Bearer {TOKEN}")
        assert info.value.reason == "wrong_service_account"
    finally:
        client.close()


async def test_api_failure_is_unavailable_not_401(fake: FakeKubeApi, client: KubeClient) -> None:
    metrics = Metrics()
    auth = authenticator(client, metrics)
    add_node_token(fake, TOKEN, "agent-a", UID1)
    fake.fail_next("POST", "/apis/authentication.k8s.io/v1/tokenreviews", 500)
    try:
        with pytest.raises(AuthUnavailable, match="retry later"):
            await auth.authenticate(f"Bearer {TOKEN}")
        assert metrics.token_reviews.labels("error")._value.get() == 1
        fake.fail_next("GET", "/api/v1/namespaces/nodemesh-system/pods/agent-a", 503)
        with pytest.raises(AuthUnavailable):
            await auth.authenticate(f"Bearer {TOKEN}")
        assert await auth.authenticate(f"Bearer {TOKEN}") == "node-1"
    finally:
        client.close()


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer " + "x" * 20000])
async def test_malformed_headers_never_reach_the_api(
    fake: FakeKubeApi, client: KubeClient, header: str | None
) -> None:
    try:
        with pytest.raises(AuthError):
            await authenticator(client, Metrics()).authenticate(header)
        assert reviews(fake) == 0
    finally:
        client.close()
