"""The fake API server's pure parts: selectors, patches, watch-event translation, the table."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.kubeapi.patch import PatchError, json_patch, merge_patch
from tests.fakes.kubeapi.resources import RESOURCES, ResourceTable, ResourceType
from tests.fakes.kubeapi.selectors import (
    Selector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from tests.fakes.kubeapi.store import Event, translate

LABELS = {"app": "web", "tier": "front", "n": "5"}

LABEL_CASES: list[tuple[str, bool]] = [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app=db", False),
    ("app!=db", True),
    ("missing!=x", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("app in (db,web)", True),
    ("app in (db)", False),
    ("missing notin (a)", True),
    ("app notin (web)", False),
    ("app=web,tier=front", True),
    ("app=web,tier=back", False),
    ("app in (web, db), tier notin (back)", True),
    ("n>4", True),
    ("n<5", False),
    ("missing>1", False),
    ("example.com/role=x", False),
    ("app=", False),
]


@pytest.mark.parametrize(("selector", "matches"), LABEL_CASES)
def test_label_selector(selector: str, matches: bool) -> None:
    reqs = parse_label_selector(selector)
    assert all(r.matches(LABELS) for r in reqs) is matches


@pytest.mark.parametrize(
    "bad",
    [
        "app in web",
        "app in ()",
        "-app=x",
        "app=web,",
        "app=we b",
        "app=" + "x" * 64,
        "n>x",
        "app in (a,b",
    ],
)
def test_bad_label_selectors_are_rejected(bad: str) -> None:
    with pytest.raises(SelectorError, match=r"requirement|label selector"):
        parse_label_selector(bad)


def test_field_selector() -> None:
    obj: dict[str, Any] = {
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {"nodeName": "node-1"},
    }
    allowed = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")

    def sel(text: str) -> bool:
        return Selector(fields=parse_field_selector(text, allowed)).matches(obj)

    assert sel("spec.nodeName=node-1") and sel("spec.nodeName==node-1")
    assert not sel("spec.nodeName!=node-1") and sel("metadata.name=a,metadata.namespace=ns")
    assert sel("status.phase=")  # a missing field is the empty string
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.hostname"):
        parse_field_selector("spec.hostname=x", allowed)
    with pytest.raises(SelectorError, match="invalid selector"):
        parse_field_selector("spec.nodeName", allowed)


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "new": {"x": 1}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "new": {"x": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # not mutated
    assert merge_patch({"a": 1}, ["x"]) == ["x"]


def test_json_patch_rfc6902() -> None:
    doc = {"metadata": {"annotations": {"a": "1"}}, "list": [1, 2, 3]}
    ops = [
        {"op": "add", "path": "/metadata/annotations/b~1c", "value": "2"},
        {"op": "replace", "path": "/list/0", "value": 9},
        {"op": "remove", "path": "/list/1"},
        {"op": "add", "path": "/list/-", "value": 4},
        {"op": "copy", "from": "/metadata/annotations/a", "path": "/copied"},
        {"op": "move", "from": "/copied", "path": "/moved"},
        {"op": "test", "path": "/moved", "value": "1"},
    ]
    assert json_patch(doc, ops) == {
        "metadata": {"annotations": {"a": "1", "b/c": "2"}},
        "list": [9, 3, 4],
        "moved": "1",
    }
    assert doc["list"] == [1, 2, 3]
    for bad, msg in [
        ([{"op": "remove", "path": "/nope"}], "does not exist"),
        ([{"op": "replace", "path": "/list/7", "value": 1}], "out of range"),
        ([{"op": "test", "path": "/list/0", "value": 5}], "test of '/list/0' failed"),
        ([{"op": "frob", "path": "/x"}], "unknown op"),
        ([{"op": "add", "path": "x", "value": 1}], "must start with '/'"),
        ({"op": "add"}, "must be a list"),
    ]:
        with pytest.raises(PatchError, match=msg):
            json_patch(doc, bad)


POD = ResourceTable().by_path("", "v1", "pods")


def ev(etype: str, labels: dict[str, str], prev: dict[str, str] | None) -> Event:
    def obj(lbl: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": "p", "namespace": "d", "labels": lbl}}

    assert POD is not None
    return Event(1, etype, POD, obj(labels), None if prev is None else obj(prev))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "seen"),
    [
        (ev("ADDED", {"a": "1"}, None), "ADDED"),
        (ev("ADDED", {"a": "2"}, None), None),
        (ev("MODIFIED", {"a": "1"}, {"a": "1"}), "MODIFIED"),
        (ev("MODIFIED", {"a": "2"}, {"a": "1"}), "DELETED"),
        (ev("MODIFIED", {"a": "1"}, {"a": "2"}), "ADDED"),
        (ev("MODIFIED", {"a": "2"}, {"a": "3"}), None),
        (ev("DELETED", {"a": "1"}, {"a": "1"}), "DELETED"),
        (ev("DELETED", {"a": "2"}, {"a": "2"}), None),
    ],
)
def test_watch_translation_follows_the_selector(event: Event, seen: str | None) -> None:
    got = translate(event, Selector(labels=parse_label_selector("a=1")))
    assert (got[0] if got else None) == seen


def test_resource_table_rejects_duplicates_and_resolves() -> None:
    table = ResourceTable()
    assert table.by_kind("coordination.k8s.io/v1", "Lease") is table.by_name("leases")
    assert table.by_name("leases.coordination.k8s.io") is table.by_name("Lease")
    pods = table.by_path("", "v1", "pods")
    assert pods is not None and pods.collection_path("ns") == "/api/v1/namespaces/ns/pods"
    dup = ResourceType("", "v1", "pods", "Pod2", namespaced=True)
    with pytest.raises(ValueError, match="listed twice"):
        ResourceTable((*RESOURCES, dup))
