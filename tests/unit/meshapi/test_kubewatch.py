from __future__ import annotations

from typing import Any

import pytest

from meshapi.kubewatch import KubeWatchError, Reflector, Step, newer, parse_list


def pod(name: str, rv: str, ns: str = "default", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv}, **extra}


def ev(type_: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "object": obj}


def listed(*objs: dict[str, Any], rv: str = "10") -> Reflector:
    r = Reflector("Pod", "v1")
    assert r.replace(list(objs), rv) is Step.CHANGED
    return r


def test_fresh_reflector_needs_a_list() -> None:
    r = Reflector("Pod", "v1")
    assert r.needs_list and not r.synced and r.resource_version is None
    assert r.apply(ev("ADDED", pod("a", "5"))) is Step.RELIST


def test_replace_fills_kind_and_api_version_and_sets_resume_point() -> None:
    r = listed(pod("a", "3"), pod("b", "4", ns="other"), rv="7")
    assert r.synced and not r.needs_list and r.resource_version == "7"
    assert set(r.store) == {("default", "a"), ("other", "b")}
    assert r.store[("default", "a")]["kind"] == "Pod"
    assert r.store[("default", "a")]["apiVersion"] == "v1"


def test_replace_reports_unchanged_when_nothing_differs() -> None:
    r = listed(pod("a", "3"))
    assert r.replace([pod("a", "3")], "12") is Step.UNCHANGED
    assert r.resource_version == "12"
    assert r.replace([pod("a", "13")], "13") is Step.CHANGED
    assert r.replace([], "14") is Step.CHANGED and not r.store


def test_first_empty_list_is_a_change_so_consumers_learn_it_synced() -> None:
    r = Reflector("Namespace", "v1")
    assert r.replace([], "1") is Step.CHANGED


@pytest.mark.parametrize(
    ("events", "expected_steps", "expected_rv", "expected_keys"),
    [
        # add, modify, delete
        (
            [
                ev("ADDED", pod("b", "11")),
                ev("MODIFIED", pod("a", "12")),
                ev("DELETED", pod("b", "13")),
            ],
            [Step.CHANGED, Step.CHANGED, Step.CHANGED],
            "13",
            {("default", "a")},
        ),
        # duplicate of the listed object, then a stale modification
        (
            [ev("MODIFIED", pod("a", "3")), ev("MODIFIED", pod("a", "2"))],
            [Step.UNCHANGED, Step.UNCHANGED],
            "10",
            {("default", "a")},
        ),
        # a delete of an unknown object
        ([ev("DELETED", pod("zz", "11"))], [Step.UNCHANGED], "11", {("default", "a")}),
        # an add older than the list: already reflected by it
        ([ev("ADDED", pod("old", "9"))], [Step.UNCHANGED], "10", {("default", "a")}),
        # bookmarks advance the resume point without touching the store
        (
            [ev("BOOKMARK", {"kind": "Pod", "metadata": {"name": "", "resourceVersion": "40"}})],
            [Step.UNCHANGED],
            "40",
            {("default", "a")},
        ),
    ],
)
def test_events(
    events: list[dict[str, Any]],
    expected_steps: list[Step],
    expected_rv: str,
    expected_keys: set[tuple[str, str]],
) -> None:
    r = listed(pod("a", "3"))
    assert [r.apply(e) for e in events] == expected_steps
    assert r.resource_version == expected_rv
    assert set(r.store) == expected_keys


def test_bookmark_object_without_name_is_accepted() -> None:
    # the API server sends bookmarks whose object has only metadata.resourceVersion
    r = listed()
    assert r.apply(ev("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "50"}})) is (
        Step.UNCHANGED
    )
    assert r.resource_version == "50"


def test_resource_version_never_moves_back() -> None:
    r = listed(pod("a", "3"), rv="10")
    r.apply(ev("BOOKMARK", {"metadata": {"resourceVersion": "30"}}))
    assert r.apply(ev("ADDED", pod("b", "20"))) is Step.UNCHANGED
    assert r.resource_version == "30"


def test_opaque_resource_versions_are_taken_as_they_come() -> None:
    r = listed(pod("a", "x1"), rv="x1")
    assert r.apply(ev("MODIFIED", pod("a", "x2"))) is Step.CHANGED
    assert r.resource_version == "x2"


def test_modified_object_replaces_stored_body() -> None:
    r = listed(pod("a", "3", spec={"nodeName": "n1"}))
    r.apply(ev("MODIFIED", pod("a", "11", spec={"nodeName": "n2"})))
    assert r.store[("default", "a")].get("spec") == {"nodeName": "n2"}


def test_error_410_means_relist_and_store_is_kept_until_replace() -> None:
    r = listed(pod("a", "3"))
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    assert r.apply(ev("ERROR", gone)) is Step.RELIST
    assert r.needs_list and "410 Expired: too old" in r.last_error
    assert set(r.store) == {("default", "a")}
    # events of the dead watch cannot be placed any more
    assert r.apply(ev("ADDED", pod("b", "99"))) is Step.RELIST
    assert r.replace([pod("b", "99")], "100") is Step.CHANGED
    assert set(r.store) == {("default", "b")} and r.last_error == ""


def test_other_error_events_mean_retry_from_the_same_point() -> None:
    r = listed(rv="10")
    err = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd"}
    assert r.apply(ev("ERROR", err)) is Step.RETRY
    assert r.resource_version == "10" and "500" in r.last_error


def test_watch_failed() -> None:
    r = listed(rv="10")
    assert r.watch_failed(500, "boom") is Step.RETRY and r.resource_version == "10"
    assert r.watch_failed(None, "connection reset") is Step.RETRY
    assert "transport" in r.last_error
    assert r.watch_failed(410, "Gone") is Step.RELIST and r.needs_list
    # without a resume point every failure leads to a list
    assert Reflector("Pod", "v1").watch_failed(500) is Step.RELIST


@pytest.mark.parametrize(
    ("event", "path"),
    [
        ([], ""),
        ({"type": "SOMETHING", "object": {}}, "type"),
        ({"type": "ADDED"}, "object"),
        (
            {"type": "ADDED", "object": {"metadata": {"resourceVersion": "1"}}},
            "object.metadata.name",
        ),
        (
            {"type": "ADDED", "object": {"metadata": {"name": "a"}}},
            "object.metadata.resourceVersion",
        ),
        (
            {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": 5}}},
            "object.metadata.resourceVersion",
        ),
        (
            {
                "type": "ADDED",
                "object": {"metadata": {"name": "a", "namespace": 1, "resourceVersion": "5"}},
            },
            "object.metadata.namespace",
        ),
        ({"type": "ERROR", "object": "boom"}, "object"),
    ],
)
def test_malformed_events_raise_and_change_nothing(event: object, path: str) -> None:
    r = listed(pod("a", "3"))
    with pytest.raises(KubeWatchError) as info:
        r.apply(event)
    assert info.value.path == path
    assert r.resource_version == "10" and set(r.store) == {("default", "a")}


def test_parse_list() -> None:
    page = parse_list(
        {"metadata": {"resourceVersion": "5", "continue": "abc"}, "items": [pod("a", "3")]}
    )
    assert page.resource_version == "5" and page.continue_token == "abc"
    assert [i["metadata"]["name"] for i in page.items] == ["a"]
    assert parse_list({"metadata": {"resourceVersion": "5"}, "items": None}).items == ()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"items": []}, "metadata"),
        ({"metadata": {}, "items": []}, "metadata.resourceVersion"),
        ({"metadata": {"resourceVersion": "1"}, "items": {}}, "items"),
        (
            {"metadata": {"resourceVersion": "1"}, "items": [{"metadata": {"name": "a"}}]},
            "items[0].metadata.resourceVersion",
        ),
    ],
)
def test_parse_list_rejects_malformed(body: object, path: str) -> None:
    with pytest.raises(KubeWatchError) as info:
        parse_list(body)
    assert info.value.path == path


def test_replace_rejects_malformed_items_and_keeps_state() -> None:
    r = listed(pod("a", "3"))
    with pytest.raises(KubeWatchError, match=r"items\[1\]"):
        r.replace([pod("b", "4"), {"metadata": {}}], "20")
    assert r.resource_version == "10" and set(r.store) == {("default", "a")}


def test_newer() -> None:
    assert newer("10", "9") and not newer("9", "10") and not newer("5", "5")
    assert not newer("a", "b")
