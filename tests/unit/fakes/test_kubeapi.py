"""The fake API server, driven through the real `kubernetes` client (sync APIs in threads).

What the client does with an expired watch (documented in the fake's docstring and pinned here):
the server answers HTTP 200 with one ``ERROR`` event carrying a 410 ``Expired`` Status;
``kubernetes.watch.Watch().stream`` retries once from the same version when no
``timeout_seconds`` is given, then raises ``ApiException(status=410)``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fakes.kubeapi import API_AUDIENCE, FakeKubeApi, FakeKubeApiError
from tests.unit.controller.helpers import namespace, pod, service

POLICY = {
    "apiVersion": "security.nodemesh.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny-admin", "namespace": "default"},
    "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
}


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval=0.1).running_in_thread() as fake:
        yield fake


@pytest.fixture
def api_client(api: FakeKubeApi, tmp_path: Path) -> Iterator[client.ApiClient]:
    c = kubernetes.config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "kc")))
    yield c
    c.close()


@pytest.fixture
def v1(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def names(items: list[Any]) -> list[str]:
    return [i.metadata.name for i in items]


def collect(stream: Iterator[dict[str, Any]], n: int, out: list[dict[str, Any]]) -> None:
    for ev in stream:
        out.append(ev)
        if len([e for e in out if e["type"] != "BOOKMARK"]) >= n:
            return


# -- list ---------------------------------------------------------------------------------------


def test_list_with_label_and_field_selectors(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.apply(namespace("other"))
    api.apply(pod("a", labels={"app": "web", "tier": "front"}, node="node-1"))
    api.apply(pod("b", labels={"app": "web"}, node="node-2"))
    api.apply(pod("c", labels={"app": "db"}, node="node-1"))
    api.apply(pod("d", "other", labels={"app": "web", "tier": "back"}, node="node-1"))
    assert names(v1.list_pod_for_all_namespaces().items) == ["a", "b", "c", "d"]
    assert names(v1.list_namespaced_pod("default").items) == ["a", "b", "c"]
    cases = {
        "app=web": ["a", "b", "d"],
        "app==web,tier": ["a", "d"],
        "app!=web": ["c"],
        "tier notin (front)": ["b", "c", "d"],
        "app in (db, web),!tier": ["b", "c"],
        "tier in (front,back)": ["a", "d"],
    }
    for sel, want in cases.items():
        assert names(v1.list_pod_for_all_namespaces(label_selector=sel).items) == want, sel
    assert names(v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1").items) == [
        "a",
        "c",
        "d",
    ]
    got = v1.list_pod_for_all_namespaces(
        field_selector="spec.nodeName!=node-1,metadata.namespace==default"
    )
    assert names(got.items) == ["b"]
    assert names(v1.list_namespaced_pod("default", field_selector="metadata.name=c").items) == ["c"]
    with pytest.raises(ApiException) as err:
        v1.list_pod_for_all_namespaces(field_selector="spec.hostname=x")
    assert err.value.status == 400 and "field label not supported: spec.hostname" in str(
        err.value.body
    )
    with pytest.raises(ApiException) as err:
        v1.list_pod_for_all_namespaces(label_selector="app in web")
    assert err.value.status == 400


def test_list_paging_is_a_consistent_snapshot(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    for i in range(5):
        api.apply(pod(f"p{i}"))
    first = v1.list_namespaced_pod("default", limit=2)
    assert names(first.items) == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    # changes after the first page do not show up in later pages of the same list
    api.delete("Pod", "default", "p2")
    api.apply(pod("p9"))
    second = v1.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    assert names(second.items) == ["p2", "p3"]
    assert second.metadata.resource_version == first.metadata.resource_version
    third = v1.list_namespaced_pod("default", limit=2, _continue=second.metadata._continue)
    assert names(third.items) == ["p4"] and not third.metadata._continue
    assert names(v1.list_namespaced_pod("default").items) == ["p0", "p1", "p3", "p4", "p9"]
    # once history is compacted the token is too old: 410, as for an etcd compaction
    api.compact()
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    assert err.value.status == 410 and json.loads(err.value.body)["reason"] == "Expired"


def test_list_items_and_metadata_look_like_a_real_server(
    api: FakeKubeApi, api_client: client.ApiClient
) -> None:
    api.apply(pod(uid="u1"))
    api.apply(POLICY)
    resp = client.CoreV1Api(api_client).list_namespaced_pod("default", _preload_content=False)
    body = json.loads(resp.data)
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    (item,) = body["items"]
    assert "kind" not in item and item["metadata"]["uid"] == "u1"
    assert int(item["metadata"]["resourceVersion"]) <= int(body["metadata"]["resourceVersion"])
    pols = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "security.nodemesh.io", "v1", "default", "authorizationpolicies"
    )
    assert pols["kind"] == "AuthorizationPolicyList"
    assert pols["items"][0]["kind"] == "AuthorizationPolicy"  # unstructured items keep kind
    assert pols["items"][0]["metadata"]["generation"] == 1


# -- watch --------------------------------------------------------------------------------------


def test_watch_from_resource_version_sees_later_changes_in_order(
    api: FakeKubeApi, v1: client.CoreV1Api
) -> None:
    api.apply(pod("a"))
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    api.apply(pod("b"))  # after rv: replayed from history
    events: list[dict[str, Any]] = []
    w = watch.Watch()
    t = threading.Thread(
        target=collect,
        args=(
            w.stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=10),
            4,
            events,
        ),
    )
    t.start()
    api.wait_for_watches_sync(1)
    api.apply(pod("a", labels={"app": "web", "v": "2"}))
    api.delete("Pod", "default", "b")
    api.apply(pod("c", "kube-system"))  # another namespace: not seen
    api.apply(pod("d"))
    t.join(10)
    assert not t.is_alive()
    got = [(e["type"], e["object"].metadata.name) for e in events]
    assert got == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "d")]
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions) and versions[0] > int(rv)
    assert events[1]["object"].metadata.labels == {"app": "web", "v": "2"}


def test_watch_without_version_starts_with_current_state_and_selectors_apply(
    api: FakeKubeApi, v1: client.CoreV1Api
) -> None:
    api.apply(pod("a", node="node-1"))
    api.apply(pod("b", node="node-2"))
    events: list[dict[str, Any]] = []
    stream = watch.Watch().stream(
        v1.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-1", timeout_seconds=10
    )
    t = threading.Thread(target=collect, args=(stream, 4, events))
    t.start()
    api.wait_for_watches_sync(1)
    moved = pod("a", node="node-2")
    api.apply(moved)  # stops matching: DELETED for this watcher
    api.apply(pod("b", node="node-1"))  # starts matching: ADDED
    api.apply(pod("b", node="node-1", labels={"app": "x"}))
    t.join(10)
    got = [(e["type"], e["object"].metadata.name) for e in events]
    assert got == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b"), ("MODIFIED", "b")]
    assert events[1]["object"].spec.node_name == "node-2"


def test_bookmarks_arrive_and_carry_the_current_version(
    api: FakeKubeApi, v1: client.CoreV1Api
) -> None:
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    api.apply(service())  # another resource moves the global version
    w = watch.Watch()
    marks = []
    for ev in w.stream(
        v1.list_namespaced_pod,
        "default",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        assert ev["type"] == "BOOKMARK"
        marks.append(ev["raw_object"])
        if len(marks) == 2:
            w.stop()
    assert marks[0]["kind"] == "Pod" and marks[0]["apiVersion"] == "v1"
    assert marks[-1]["metadata"]["resourceVersion"] == str(api.resource_version)
    assert w.resource_version == str(api.resource_version)
    # without allowWatchBookmarks there are none: the stream ends at its timeout, empty
    assert (
        list(
            watch.Watch().stream(
                v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
            )
        )
        == []
    )


def test_send_initial_events_ends_with_annotated_bookmark(
    api: FakeKubeApi, v1: client.CoreV1Api
) -> None:
    api.apply(pod("a"))
    w = watch.Watch()
    seen = []
    for ev in w.stream(
        v1.list_namespaced_pod,
        "default",
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        seen.append(ev)
        if ev["type"] == "BOOKMARK":
            w.stop()
    assert [e["type"] for e in seen] == ["ADDED", "BOOKMARK"]
    assert seen[1]["raw_object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_expired_watch_is_an_error_event_and_the_client_raises_410(
    api: FakeKubeApi, v1: client.CoreV1Api, api_client: client.ApiClient
) -> None:
    old = v1.list_namespaced_pod("default").metadata.resource_version
    api.apply(pod("a"))
    api.compact()
    # on the wire: HTTP 200, one ERROR event with a 410 Expired Status, end of stream
    resp = v1.list_namespaced_pod(
        "default", watch=True, resource_version=old, _preload_content=False
    )
    assert resp.status == 200
    lines = [json.loads(line) for line in resp.data.splitlines()]
    assert len(lines) == 1 and lines[0]["type"] == "ERROR"
    status = lines[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    # through Watch: with timeout_seconds it raises at once ...
    with pytest.raises(ApiException) as err:
        list(
            watch.Watch().stream(
                v1.list_namespaced_pod, "default", resource_version=old, timeout_seconds=5
            )
        )
    assert err.value.status == 410 and "Expired" in str(err.value.reason)
    # ... without, it retries once from the same version, then raises
    api.clear_requests()
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=old))
    assert err.value.status == 410
    assert [r.query.get("resourceVersion") for r in api.requests] == [old, old]
    # the current version is fine
    now = v1.list_namespaced_pod("default").metadata.resource_version
    assert (
        list(
            watch.Watch().stream(
                v1.list_namespaced_pod, "default", resource_version=now, timeout_seconds=1
            )
        )
        == []
    )


def test_history_is_bounded() -> None:
    with FakeKubeApi(max_history=3, default_namespaces=()).running_in_thread() as api:
        for i in range(5):
            api.apply(pod(f"p{i}"))
        # versions 1..5; history keeps 3..5, so watching from 2 works and from 1 is expired
        cfg = api.client_configuration()
        with client.ApiClient(cfg) as c:
            v1 = client.CoreV1Api(c)
            got = list(
                watch.Watch().stream(
                    v1.list_namespaced_pod, "default", resource_version="2", timeout_seconds=1
                )
            )
            assert [e["object"].metadata.name for e in got] == ["p2", "p3", "p4"]
            with pytest.raises(ApiException) as err:
                list(
                    watch.Watch().stream(
                        v1.list_namespaced_pod, "default", resource_version="1", timeout_seconds=1
                    )
                )
            assert err.value.status == 410


def test_close_watches_ends_streams_cleanly(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    done = threading.Event()
    events: list[Any] = []

    def run() -> None:
        resp = v1.list_namespaced_pod(
            "default", watch=True, resource_version="0", _preload_content=False
        )
        events.extend(line for line in resp.stream() if line)
        resp.release_conn()
        done.set()

    threading.Thread(target=run).start()
    api.wait_for_watches_sync(1)
    assert api.close_watches() == 1
    assert done.wait(5)
    # the client sees the end of the stream before the server's handler has unregistered it
    deadline = time.monotonic() + 5
    while api.open_watches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.open_watches == 0


def test_watch_stream_is_chunked(api: FakeKubeApi) -> None:
    ctx = ssl.create_default_context(cadata=api.ca_pem.decode())
    req = urllib.request.Request(
        f"{api.url}/api/v1/namespaces?watch=true&timeoutSeconds=1",
        headers={"Authorization": f"Bearer {api.admin_token}"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["Content-Type"].startswith("application/json")
        lines = [json.loads(line) for line in resp.read().splitlines()]
    assert [ev["object"]["metadata"]["name"] for ev in lines] == [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]


# -- authentication, authorization, TokenReview ---------------------------------------------------


def test_requests_need_a_registered_bearer_token(api: FakeKubeApi) -> None:
    for token in (None, "nope"):
        cfg = client.Configuration(host=api.url)
        cfg.ssl_ca_cert = str(api.ca_file)
        if token:
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        with client.ApiClient(cfg) as c, pytest.raises(ApiException) as err:
            client.CoreV1Api(c).list_namespace()
        assert err.value.status == 401
        assert json.loads(err.value.body) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
    # a token only for another audience cannot call the API server
    api.add_token("projected", username="system:serviceaccount:ns:sa", audiences=["nodemesh"])
    with client.ApiClient(api.client_configuration("projected")) as c:
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(c).list_namespace()
        assert err.value.status == 401
    assert [r.token for r in api.requests] == [None, "nope", "projected"]


def test_tls_is_verified_against_the_fakes_ca(api: FakeKubeApi) -> None:
    with FakeKubeApi().running_in_thread() as other:
        cfg = api.client_configuration()
        cfg.ssl_ca_cert = str(other.ca_file)  # the wrong CA
        cfg.retries = False
        with client.ApiClient(cfg) as c, pytest.raises(Exception, match="CERTIFICATE_VERIFY"):
            client.CoreV1Api(c).list_namespace()


def test_restricted_token_gets_403(api: FakeKubeApi, tmp_path: Path) -> None:
    api.add_token(
        "agent",
        username="system:serviceaccount:nodemesh-system:agent",
        allow=[("list", "pods"), ("watch", "pods"), ("patch", "pods")],
    )
    api.apply(pod("a"))
    c = kubernetes.config.new_client_from_config(
        str(api.write_kubeconfig(tmp_path / "kc", token="agent"))
    )
    with c:
        v1 = client.CoreV1Api(c)
        assert names(v1.list_namespaced_pod("default").items) == ["a"]
        v1.patch_namespaced_pod("a", "default", {"metadata": {"annotations": {"x": "y"}}})
        with pytest.raises(ApiException) as err:
            v1.read_namespaced_pod("a", "default")
        assert err.value.status == 403
        assert json.loads(err.value.body)["message"] == (
            'pods "a" is forbidden: User "system:serviceaccount:nodemesh-system:agent" cannot '
            'get resource "pods" in API group "" in the namespace "default"'
        )
        with pytest.raises(ApiException) as err:
            v1.list_namespace()
        assert (
            err.value.status == 403
            and "at the cluster scope" in json.loads(err.value.body)["message"]
        )
        api.restrict("agent", None)
        assert v1.read_namespaced_pod("a", "default").metadata.annotations == {"x": "y"}


def review(c: client.ApiClient, token: str, audiences: list[str] | None) -> Any:
    body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
    return client.AuthenticationV1Api(c).create_token_review(body).status


def test_token_review(api: FakeKubeApi, api_client: client.ApiClient) -> None:
    api.add_token(
        "node-1-token",
        username="system:serviceaccount:nodemesh-system:node-agent",
        uid="sa-uid",
        groups=["system:serviceaccounts", "system:authenticated"],
        extra={"authentication.kubernetes.io/node-name": ["node-1"]},
        audiences=["nodemesh", "other"],
    )
    ok = review(api_client, "node-1-token", ["nodemesh"])
    assert ok.authenticated is True and ok.audiences == ["nodemesh"] and ok.error is None
    assert ok.user.username == "system:serviceaccount:nodemesh-system:node-agent"
    assert ok.user.uid == "sa-uid" and ok.user.groups == [
        "system:serviceaccounts",
        "system:authenticated",
    ]
    assert ok.user.extra == {"authentication.kubernetes.io/node-name": ["node-1"]}
    wrong = review(api_client, "node-1-token", ["someone-else"])
    assert not wrong.authenticated and wrong.audiences is None
    assert (
        'token audiences ["nodemesh" "other"] is invalid for the target audiences '
        '["someone-else"]' in wrong.error
    )
    # empty audiences: the API server's own, which this token does not have
    assert not review(api_client, "node-1-token", None).authenticated
    unknown = review(api_client, "forged", ["nodemesh"])
    assert unknown.authenticated is None and "invalid bearer token" in unknown.error
    # the admin token is valid for the API audience
    assert review(api_client, api.admin_token, None).audiences == [API_AUDIENCE]


def test_token_review_needs_an_authorized_caller(api: FakeKubeApi) -> None:
    api.add_token("caller", username="u", allow=[("list", "pods")])
    with client.ApiClient(api.client_configuration("caller")) as c:
        with pytest.raises(ApiException) as err:
            review(c, api.admin_token, None)
        assert err.value.status == 403
        api.restrict("caller", [("create", "tokenreviews.authentication.k8s.io")])
        assert review(c, api.admin_token, None).authenticated


# -- writes -------------------------------------------------------------------------------------


def test_create_get_update_conflict_delete(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"), data={"a": "1"})
    made = v1.create_namespaced_config_map("default", body)
    assert made.metadata.uid and made.metadata.creation_timestamp
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("default", body)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("missing-ns", body)
    assert err.value.status == 404
    got = v1.read_namespaced_config_map("cfg", "default")
    got.data = {"a": "2"}
    updated = v1.replace_namespaced_config_map("cfg", "default", got)
    assert int(updated.metadata.resource_version) > int(made.metadata.resource_version)
    assert updated.metadata.uid == made.metadata.uid
    stale = made
    stale.data = {"a": "3"}
    with pytest.raises(ApiException) as err:
        v1.replace_namespaced_config_map("cfg", "default", stale)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    assert "the object has been modified" in json.loads(err.value.body)["message"]
    # a no-op update keeps the version
    same = v1.replace_namespaced_config_map("cfg", "default", updated)
    assert same.metadata.resource_version == updated.metadata.resource_version
    status = v1.delete_namespaced_config_map("cfg", "default")
    assert status["status"] == "Success"  # client 37 returns delete bodies as dicts
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_config_map("cfg", "default")
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'configmaps "cfg" not found'


def test_merge_and_json_patch_of_annotations(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.apply(pod("a", annotations={"keep": "1", "drop": "2"}))
    before = v1.read_namespaced_pod("a", "default")
    # the client's default for a dict body is a strategic merge patch
    patched = v1.patch_namespaced_pod(
        "a",
        "default",
        {"metadata": {"annotations": {"nodemesh.io/redirected": "true", "drop": None}}},
    )
    assert patched.metadata.annotations == {"keep": "1", "nodemesh.io/redirected": "true"}
    assert patched.metadata.labels == {"app": "web"}  # untouched
    assert int(patched.metadata.resource_version) > int(before.metadata.resource_version)
    patched = v1.patch_namespaced_pod(
        "a",
        "default",
        {"metadata": {"annotations": {"m": "x"}}},
        _content_type="application/merge-patch+json",
    )
    assert patched.metadata.annotations["m"] == "x"
    patched = v1.patch_namespaced_pod(
        "a",
        "default",
        [
            {"op": "add", "path": "/metadata/annotations/j~1k", "value": "v"},
            {"op": "remove", "path": "/metadata/annotations/keep"},
        ],
    )
    assert patched.metadata.annotations == {"nodemesh.io/redirected": "true", "m": "x", "j/k": "v"}
    # a patch carrying a stale resourceVersion is a failed precondition
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod(
            "a",
            "default",
            {
                "metadata": {
                    "resourceVersion": before.metadata.resource_version,
                    "annotations": {"z": "1"},
                }
            },
        )
    assert err.value.status == 409
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod(
            "a", "default", [{"op": "test", "path": "/metadata/name", "value": "b"}]
        )
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod("missing", "default", {"metadata": {"labels": {"a": "b"}}})
    assert err.value.status == 404


def test_generation_follows_spec_changes(api: FakeKubeApi, api_client: client.ApiClient) -> None:
    co = client.CustomObjectsApi(api_client)
    made = co.create_namespaced_custom_object(
        "security.nodemesh.io", "v1", "default", "authorizationpolicies", dict(POLICY)
    )
    assert made["metadata"]["generation"] == 1
    labelled = co.patch_namespaced_custom_object(
        "security.nodemesh.io",
        "v1",
        "default",
        "authorizationpolicies",
        "deny-admin",
        {"metadata": {"labels": {"a": "b"}}},
    )
    assert labelled["metadata"]["generation"] == 1
    changed = co.patch_namespaced_custom_object(
        "security.nodemesh.io",
        "v1",
        "default",
        "authorizationpolicies",
        "deny-admin",
        {"spec": {"action": "ALLOW"}},
    )
    assert changed["metadata"]["generation"] == 2 and changed["spec"]["action"] == "ALLOW"


def test_custom_objects_watch(api: FakeKubeApi, api_client: client.ApiClient) -> None:
    co = client.CustomObjectsApi(api_client)
    events: list[dict[str, Any]] = []
    stream = watch.Watch().stream(
        co.list_cluster_custom_object,
        "security.nodemesh.io",
        "v1",
        "peerauthentications",
        timeout_seconds=10,
    )
    t = threading.Thread(target=collect, args=(stream, 2, events))
    t.start()
    api.wait_for_watches_sync(1)
    pa = {
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "pa", "namespace": "default"},
        "spec": {"mtls": {"mode": "PERMISSIVE"}},
    }
    api.apply(pa)
    api.delete("security.nodemesh.io/v1/PeerAuthentication", "default", "pa")
    t.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "pa"),
        ("DELETED", "pa"),
    ]


def test_other_resources_are_served(api: FakeKubeApi, api_client: client.ApiClient) -> None:
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"), spec=client.V1LeaseSpec(holder_identity="me")
    )
    coord = client.CoordinationV1Api(api_client)
    coord.create_namespaced_lease("kube-system", lease)
    assert coord.read_namespaced_lease("leader", "kube-system").spec.holder_identity == "me"
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "node", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "n"}},
            "template": {
                "metadata": {"labels": {"app": "n"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    api.apply(ds)
    assert (
        client.AppsV1Api(api_client)
        .read_namespaced_daemon_set("node", "default")
        .metadata.generation
        == 1
    )
    es = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.78.1.2"]}],
    }
    api.apply(es)
    got = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web"
    )
    assert names(got.items) == ["web-abc"]
    assert client.VersionApi(api_client).get_code().git_version.startswith("v1.37")
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert {"apps", "discovery.k8s.io", "security.nodemesh.io"} <= groups
    resources = client.CoreV1Api(api_client).get_api_resources().resources
    assert {r.name for r in resources} >= {"pods", "namespaces", "services", "endpoints"}
    health = api_client.call_api("GET", f"{api.url}/readyz",
                                 header_params={"Authorization": f"Bearer {api.admin_token}"})
    assert (health.status, health.read()) == (200, b"ok")


def test_namespace_delete_removes_its_contents(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.apply(namespace("team", {"nodemesh.io/dataplane-mode": "enabled"}))
    api.apply(pod("a", "team"))
    ns = v1.read_namespace("team")
    assert ns.metadata.labels == {
        "nodemesh.io/dataplane-mode": "enabled",
        "kubernetes.io/metadata.name": "team",
    }
    assert ns.status.phase == "Active"
    assert v1.read_namespace_status("team").status.phase == "Active"
    v1.delete_namespace("team")
    assert v1.list_namespaced_pod("team").items == []
    assert api.get_object("Namespace", None, "team") is None


# -- test hooks ---------------------------------------------------------------------------------


def test_fail_next_injects_errors(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.fail_next("GET", "/api/v1/namespaces/default/pods", 500)
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default")
    assert err.value.status == 500 and json.loads(err.value.body)["reason"] == "InternalError"
    assert v1.list_namespaced_pod("default").items == []  # count=1: used up
    # a 429 with Retry-After: urllib3 under the client re-sends idempotent requests (3 times)
    api.clear_requests()
    api.fail_next("*", "/api/v1/pods", 429, count=2, retry_after=1)
    assert v1.list_pod_for_all_namespaces().items == []
    assert [r.path for r in api.requests] == ["/api/v1/pods"] * 3
    api.fail_next("GET", "/api/v1/pods", 429, count=4, retry_after=0)
    with pytest.raises(ApiException) as err:
        v1.list_pod_for_all_namespaces()
    assert err.value.status == 429
    # ... but not writes: the Status reaches the caller
    api.fail_next("POST", "/api/v1/namespaces/default/configmaps", 429, retry_after=7)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"))
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("default", body)
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "7"
    assert json.loads(err.value.body)["reason"] == "TooManyRequests"
    assert json.loads(err.value.body)["details"] == {"retryAfterSeconds": 7}
    v1.create_namespaced_config_map("default", body)


def test_load_yaml_of_the_local_source_yaml(
    api: FakeKubeApi, v1: client.CoreV1Api, tmp_path: Path
) -> None:
    # the documents the local-source tests write, through the same yaml.safe_dump_all
    docs = [
        namespace("prod", {"nodemesh.io/dataplane-mode": "enabled"}),
        pod(uid="u1"),
        pod("web-2", "prod", uid="u2", ip="10.78.1.3"),
        service(),
        POLICY,
    ]
    f = tmp_path / "a.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    stored = api.load_yaml(f)
    assert [o["kind"] for o in stored] == [
        "Namespace",
        "Pod",
        "Pod",
        "Service",
        "AuthorizationPolicy",
    ]
    got = v1.read_namespaced_pod("web-1", "default")
    assert got.metadata.uid == "u1" and got.status.pod_ip == "10.78.1.2"
    assert got.spec.node_name == "node-1" and got.spec.service_account_name == "web"
    assert v1.read_namespaced_service("web", "default").spec.cluster_ip == "10.96.0.10"
    # loading the same text again modifies in place (uids kept), and a str path works too
    rv = api.resource_version
    api.load_yaml(str(f))
    assert api.resource_version == rv  # identical objects: no-op writes
    api.load_yaml(yaml.safe_dump_all([pod(uid="u1", ip="10.78.1.9")]))
    assert api.get_object("v1/Pod", "default", "web-1")["status"]["podIP"] == "10.78.1.9"
    with pytest.raises(FakeKubeApiError, match="document 0: apps/v1/StatefulSet is not served"):
        api.load_yaml("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\n")
    with pytest.raises(FakeKubeApiError, match="malformed YAML"):
        api.load_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n")
    with pytest.raises(FakeKubeApiError, match=r"metadata\.labels must map strings to strings"):
        api.load_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {a: 1}}\n")


def test_requests_log(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.clear_requests()
    v1.list_namespaced_pod("default", label_selector="app=web", limit=5)
    (rec,) = api.requests
    method, path, query, token = rec
    assert (method, path, token) == ("GET", "/api/v1/namespaces/default/pods", "admin-token")
    assert query == {"labelSelector": "app=web", "limit": "5"}


async def test_async_mode_on_the_tests_loop(tmp_path: Path) -> None:
    async with FakeKubeApi(bookmark_interval=0.05) as api:
        api.apply(pod("a"))
        kc = api.write_kubeconfig(tmp_path / "kc")
        c = await asyncio.to_thread(kubernetes.config.new_client_from_config, str(kc))
        try:
            v1 = client.CoreV1Api(c)
            got = await asyncio.to_thread(v1.list_namespaced_pod, "default")
            assert names(got.items) == ["a"]
            events: list[dict[str, Any]] = []
            stream = watch.Watch().stream(
                v1.list_namespaced_pod,
                "default",
                resource_version=got.metadata.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=10,
            )
            reader = asyncio.create_task(asyncio.to_thread(collect, stream, 1, events))
            await api.wait_for_watches(1)
            api.apply(pod("b"))
            await asyncio.wait_for(reader, 10)
            assert ("ADDED", "b") in [
                (e["type"], e["raw_object"]["metadata"]["name"]) for e in events
            ]
            # a watch still open when the server stops is ended by it
            stream2 = watch.Watch().stream(
                v1.list_namespaced_pod,
                "default",
                resource_version=got.metadata.resource_version,
                timeout_seconds=30,
            )
            reader2 = asyncio.create_task(asyncio.to_thread(lambda: [e for e in stream2][:0]))
            await api.wait_for_watches(2)  # the first stream's generator is still open too
            started = time.monotonic()
        finally:
            await asyncio.to_thread(c.close)
    await asyncio.wait_for(reader2, 10)
    assert time.monotonic() - started < 10


def test_status_is_a_subresource(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.apply(pod("a", ip="10.78.1.2"))
    # writes to the pod itself keep the stored status, as on a real server
    got = v1.patch_namespaced_pod(
        "a", "default", {"status": {"podIP": "1.2.3.4"}, "metadata": {"labels": {"x": "y"}}}
    )
    assert got.status.pod_ip == "10.78.1.2" and got.metadata.labels == {"app": "web", "x": "y"}
    # the /status endpoint changes only the status
    got = v1.patch_namespaced_pod_status(
        "a", "default", {"status": {"podIP": "10.78.1.7"}, "metadata": {"labels": {"z": "1"}}}
    )
    assert got.status.pod_ip == "10.78.1.7" and "z" not in got.metadata.labels
    assert v1.read_namespaced_pod_status("a", "default").status.pod_ip == "10.78.1.7"
    api.add_token("kubelet", username="system:node:node-1", allow=[("patch", "pods/status")])
    with client.ApiClient(api.client_configuration("kubelet")) as c:
        kv1 = client.CoreV1Api(c)
        kv1.patch_namespaced_pod_status("a", "default", {"status": {"phase": "Running"}})
        with pytest.raises(ApiException) as err:
            kv1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "z"}}})
        assert err.value.status == 403
    # the test hook sets whatever it is given
    api.apply(pod("a", ip="10.78.1.8"))
    assert v1.read_namespaced_pod("a", "default").status.pod_ip == "10.78.1.8"


def test_list_versions_and_collections(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.apply(pod("a"))
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    api.apply(pod("b"))
    exact = v1.list_namespaced_pod("default", resource_version=rv, resource_version_match="Exact")
    assert names(exact.items) == ["a"] and exact.metadata.resource_version == rv
    assert names(v1.list_namespaced_pod("default", resource_version=rv).items) == ["a", "b"]
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default", resource_version=str(api.resource_version + 5))
    assert err.value.status == 504
    made = v1.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="gen-"))
    )
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == 9
    gone = v1.delete_namespaced_pod("a", "default")  # pods answer with the object
    assert gone.kind == "Pod" and gone.metadata.name == "a"
    v1.delete_collection_namespaced_pod("default", label_selector="app=web")
    assert v1.list_namespaced_pod("default").items == []


def test_unserved_paths_and_verbs(api: FakeKubeApi, api_client: client.ApiClient) -> None:
    resp = api_client.call_api(
        "GET",
        f"{api.url}/apis/authentication.k8s.io/v1/tokenreviews",
        header_params={"Authorization": f"Bearer {api.admin_token}"},
    )
    resp.read()
    assert resp.status == 405  # TokenReview is create-only
    v1 = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("a", "default")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        client.StorageV1Api(api_client).list_storage_class()
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod(
            "default", {"metadata": {"name": "x"}, "spec": {"containers": []}}, dry_run="All"
        )
    assert err.value.status == 400 and "dryRun" in json.loads(err.value.body)["message"]


def test_injected_failure_on_a_watch(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.fail_next("GET", "/api/v1/namespaces", 500, message="etcd is on fire")
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(v1.list_namespace, timeout_seconds=1))
    assert err.value.status == 500
    got = list(watch.Watch().stream(v1.list_namespace, timeout_seconds=1))
    assert len(got) == 4  # the default namespaces, as ADDED


def test_a_subprocess_uses_the_fake(api: FakeKubeApi, tmp_path: Path) -> None:
    import subprocess
    import sys

    kc = api.write_kubeconfig(tmp_path / "kc")
    code = (
        "import kubernetes, sys\n"
        "kubernetes.config.load_kube_config(sys.argv[1])\n"
        "v1 = kubernetes.client.CoreV1Api()\n"
        "print(','.join(n.metadata.name for n in v1.list_namespace().items))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(kc)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "default,kube-node-lease,kube-public,kube-system"
