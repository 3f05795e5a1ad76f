"""List+watch bookkeeping for one Kubernetes resource (a "reflector"), without I/O.

The caller does the HTTP (with whatever client it likes) and feeds decoded JSON here; the
reflector keeps the object store and says what to do next. Stdlib only, no ``kubernetes`` import,
so the controller and the node agent share it.

API (everything else is private)::

    r = Reflector("Pod", "v1")
    r.needs_list                      # True: no resume point, list first
    page = parse_list(body)           # a List response -> ListPage(items, resource_version, cont)
    r.replace(items, resource_version)   # after the last page -> Step.CHANGED / UNCHANGED
    r.resource_version                # where to start (or resume) the watch
    r.apply(event)                    # one decoded watch event -> Step
    r.watch_failed(status)            # the watch request itself failed with HTTP ``status``
    r.store                           # {(namespace, name): object}, read only
    r.synced                          # listed at least once

:class:`Step` says what to do: ``CHANGED`` (the store changed: recompute), ``UNCHANGED`` (nothing to
do: bookmark, duplicate or stale event), ``RELIST`` (the resume point is gone: list again and call
:meth:`Reflector.replace`), ``RETRY`` (the server reported an error: back off, then watch again
from :attr:`Reflector.resource_version`; :attr:`Reflector.last_error` says what went wrong).

Invariants:

* The store holds at most one object per ``(namespace, name)`` (``namespace`` is ``""`` for
  cluster-scoped kinds); every stored object carries ``kind``, ``apiVersion`` and a non-empty
  ``metadata.resourceVersion`` (List items lack ``kind``/``apiVersion`` on the wire: they are
  filled in from the constructor's arguments).
* :attr:`Reflector.resource_version` only moves forward while watching: every applied event and
  every ``BOOKMARK`` advances it; a stale event never moves it back.
* An event whose object is already stored with the same resourceVersion (a duplicate), or with a
  newer one (stale: resourceVersions that are decimal integers, as etcd's are, are compared as
  numbers), changes nothing. A ``DELETED`` for an object not in the store changes nothing.
* An ``ERROR`` event with code 410 (Gone), or a watch that fails with HTTP 410, clears the resume
  point: :attr:`Reflector.needs_list` is then True until the next :meth:`Reflector.replace`. The
  store is kept until then, so consumers keep the last known state meanwhile.
* Malformed input raises :class:`KubeWatchError` naming the field; the reflector is unchanged by
  the event that raised.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypedDict, cast

from meshapi.errors import WireError

GONE: Final = 410
EVENT_TYPES: Final = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


class KubeWatchError(WireError):
    """A list response or watch event did not have the shape of the Kubernetes API."""


class ObjectMetaRaw(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str


class KubeObjectRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMetaRaw


class StatusRaw(TypedDict, total=False):
    kind: str
    code: int
    reason: str
    message: str


class WatchEventRaw(TypedDict):
    type: str
    object: KubeObjectRaw | StatusRaw


#: (namespace, name); namespace is "" for cluster-scoped kinds
ObjectKey = tuple[str, str]


class Step(enum.Enum):
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    RELIST = "relist"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a List response: its items, the list's resourceVersion and the ``continue``
    token (empty on the last page)."""

    items: tuple[KubeObjectRaw, ...]
    resource_version: str
    continue_token: str


def _mapping(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise KubeWatchError(path, f"expected an object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, object], key: str, path: str, required: bool) -> str:
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None or value == "":
        if required:
            raise KubeWatchError(where, "required field is missing or empty")
        return ""
    if not isinstance(value, str):
        raise KubeWatchError(where, f"expected a string, got {type(value).__name__}")
    return value


def _object(value: object, path: str) -> tuple[ObjectKey, str, KubeObjectRaw]:
    """Validate an object's metadata: its key, its resourceVersion and the object itself."""
    obj = _mapping(value, path)
    meta = _mapping(obj.get("metadata"), f"{path}.metadata")
    name = _str(meta, "name", f"{path}.metadata", required=True)
    namespace = _str(meta, "namespace", f"{path}.metadata", required=False)
    rv = _str(meta, "resourceVersion", f"{path}.metadata", required=True)
    # only the fields the store relies on are checked here; the consumer validates the rest
    return (namespace, name), rv, cast(KubeObjectRaw, obj)


def parse_list(body: object) -> ListPage:
    """Validate a decoded List response (``{"metadata": {"resourceVersion", "continue"},
    "items": [...]}``)."""
    obj = _mapping(body, "")
    meta = _mapping(obj.get("metadata"), "metadata")
    rv = _str(meta, "resourceVersion", "metadata", required=True)
    cont = _str(meta, "continue", "metadata", required=False)
    items_raw = obj.get("items")
    if items_raw is None:
        items_raw = []
    if not isinstance(items_raw, list):
        raise KubeWatchError("items", f"expected a list, got {type(items_raw).__name__}")
    items: list[KubeObjectRaw] = []
    for i, item in enumerate(items_raw):
        _, _, raw = _object(item, f"items[{i}]")
        items.append(raw)
    return ListPage(tuple(items), rv, cont)


def newer(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is known to be newer than ``b`` (decimal ones compare as
    numbers; any other pair is not comparable, so False)."""
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return False


class Reflector:
    """The store and resume point of one resource kind; see the module docstring."""

    def __init__(self, kind: str, api_version: str) -> None:
        self.kind = kind
        self.api_version = api_version
        self._store: dict[ObjectKey, KubeObjectRaw] = {}
        self._rvs: dict[ObjectKey, str] = {}
        self._resource_version: str | None = None
        self.synced = False
        #: what the server said on the last RETRY or RELIST
        self.last_error = ""

    @property
    def store(self) -> Mapping[ObjectKey, KubeObjectRaw]:
        return MappingProxyType(self._store)

    @property
    def resource_version(self) -> str | None:
        """Where the next watch starts; None when a (re)list is needed first."""
        return self._resource_version

    @property
    def needs_list(self) -> bool:
        return self._resource_version is None

    def _complete(self, raw: KubeObjectRaw) -> KubeObjectRaw:
        if raw.get("kind") == self.kind and raw.get("apiVersion") == self.api_version:
            return raw
        full: KubeObjectRaw = {**raw, "kind": self.kind, "apiVersion": self.api_version}
        return full

    def replace(self, items: Sequence[object], resource_version: str) -> Step:
        """Install the result of a full list (all pages). CHANGED if any object differs from
        the store (added, removed, or another resourceVersion)."""
        if not resource_version:
            raise KubeWatchError("metadata.resourceVersion", "the list has no resourceVersion")
        store: dict[ObjectKey, KubeObjectRaw] = {}
        rvs: dict[ObjectKey, str] = {}
        for i, item in enumerate(items):
            key, rv, raw = _object(item, f"items[{i}]")
            store[key] = self._complete(raw)
            rvs[key] = rv
        changed = rvs != self._rvs or not self.synced
        self._store, self._rvs = store, rvs
        self._resource_version = resource_version
        self.synced = True
        self.last_error = ""
        return Step.CHANGED if changed else Step.UNCHANGED

    def apply(self, event: object) -> Step:
        """Apply one decoded watch event."""
        ev = _mapping(event, "")
        kind = ev.get("type")
        if kind not in EVENT_TYPES:
            raise KubeWatchError("type", f"unknown watch event type {kind!r}")
        if kind == "ERROR":
            return self._error(_mapping(ev.get("object"), "object"))
        if kind == "BOOKMARK":
            # a bookmark's object carries only kind and metadata.resourceVersion
            meta = _mapping(_mapping(ev.get("object"), "object").get("metadata"), "object.metadata")
            rv = _str(meta, "resourceVersion", "object.metadata", required=True)
            if self._resource_version is None:
                return Step.RELIST
            self._advance(rv)
            return Step.UNCHANGED
        key, rv, raw = _object(ev.get("object"), "object")
        if self._resource_version is None:
            # no resume point (after a 410): events of the dead watch cannot be placed
            return Step.RELIST
        known = self._rvs.get(key)
        if known is not None and (known == rv or newer(known, rv)):
            return Step.UNCHANGED  # duplicate, or older than what we hold
        if known is None and newer(self._resource_version, rv):
            return Step.UNCHANGED  # older than our list: already reflected in it
        self._advance(rv)
        if kind == "DELETED":
            if known is None:
                return Step.UNCHANGED
            del self._store[key], self._rvs[key]
            return Step.CHANGED
        self._store[key] = self._complete(raw)
        self._rvs[key] = rv
        return Step.CHANGED

    def _advance(self, rv: str) -> None:
        current = self._resource_version
        if current is None or not newer(current, rv):
            self._resource_version = rv

    def _error(self, status: Mapping[str, object]) -> Step:
        code = status.get("code")
        reason = status.get("reason") or ""
        message = status.get("message") or ""
        self.last_error = f"{code} {reason}: {message}".strip()
        if code == GONE:
            self._resource_version = None
            return Step.RELIST
        return Step.RETRY

    def watch_failed(self, status: int | None, message: str = "") -> Step:
        """The watch request failed (HTTP ``status``, None for a transport error): RELIST on
        410, else RETRY from the same resource version (after a backoff)."""
        self.last_error = f"{status if status is not None else 'transport'}: {message}".strip()
        if status == GONE or self._resource_version is None:
            self._resource_version = None
            return Step.RELIST
        return Step.RETRY
