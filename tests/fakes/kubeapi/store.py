"""The fake API server's storage: objects, one resourceVersion counter, history, watchers.

Thread-safety: every method takes the store's lock, so test hooks may call it from any thread
while the server runs on its own loop. Watchers belong to one event loop; the store appends their
events under the lock and wakes them with ``loop.call_soon_threadsafe``.

Invariants:
* ``resource_version`` is one global counter; every write (create, update, delete) takes the next
  value, which becomes the object's ``metadata.resourceVersion`` and the event's version.
* Stored objects are never mutated in place: a write stores a new dict, so history entries and
  objects can share references. Everything handed out is a deep copy.
* ``history`` holds every event with a version greater than ``oldest_rv`` (bounded: dropping the
  oldest event, or `Store.compact`, raises ``oldest_rv``). Starting a watch or continuing a list
  from a version below ``oldest_rv`` is ``410 Expired``.
* A watcher registered at version V receives exactly the events with version > V of its resource,
  in version order, each once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import datetime
import json
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import errors
from .errors import ApiError
from .resources import ResourceType
from .selectors import Selector

JsonObject = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
UpdatePart = Literal["all", "main", "status"]

_SUBDOMAIN_RE: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Event:
    rv: int
    type: EventType
    resource: ResourceType
    #: the object after the change (for DELETED: its last state, carrying the deletion version)
    obj: JsonObject
    #: the object before the change (None for ADDED)
    prev: JsonObject | None

    @property
    def namespace(self) -> str:
        return str(self.obj.get("metadata", {}).get("namespace", ""))


@dataclass(eq=False)
class Watcher:
    """One open watch: its filter and the events queued for it."""

    resource: ResourceType
    namespace: str | None
    selector: Selector
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: deque[Event] = field(default_factory=deque)
    closed: bool = False

    def wants(self, ev: Event) -> bool:
        return ev.resource is self.resource and (
            self.namespace is None or ev.namespace == self.namespace
        )

    def notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the watcher's loop is closed: nobody is reading any more
            self.closed = True


def translate(ev: Event, selector: Selector) -> tuple[EventType, JsonObject] | None:
    """What a watcher with ``selector`` sees of ``ev``: an object that stops matching is DELETED
    and one that starts matching is ADDED, as the real server's watch cache reports them."""
    if selector.empty:
        return ev.type, ev.obj
    now = selector.matches(ev.obj)
    before = ev.prev is not None and selector.matches(ev.prev)
    if ev.type == "ADDED":
        return ("ADDED", ev.obj) if now else None
    if ev.type == "DELETED":
        return ("DELETED", ev.obj) if before or now else None
    if now and before:
        return "MODIFIED", ev.obj
    if now:
        return "ADDED", ev.obj
    if before:
        return "DELETED", ev.obj
    return None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: JsonObject) -> JsonObject:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise errors.bad_request(
            "the object has no metadata (or it is not an object): every object needs metadata.name"
        )
    return meta


def object_key(rt: ResourceType, obj: JsonObject) -> tuple[str, str]:
    meta = _meta(obj)
    return (str(meta.get("namespace", "")) if rt.namespaced else "", str(meta.get("name", "")))


def _spec_part(obj: JsonObject) -> JsonObject:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def validate_object(rt: ResourceType, obj: JsonObject) -> None:
    """The checks a real server's decoding and validation make that tests could trip over."""
    meta = _meta(obj)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise errors.invalid(rt.kind, "", "metadata.name", "Required value: name is required")
    pattern = _LABEL_RE if rt.plural == "namespaces" else _SUBDOMAIN_RE
    if len(name) > 253 or not pattern.match(name):
        raise errors.invalid(
            rt.kind,
            name,
            "metadata.name",
            f"Invalid value: {name!r}: a lowercase RFC 1123 "
            f"{'label' if pattern is _LABEL_RE else 'subdomain'} must consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character",
        )
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise errors.bad_request(
                f"{rt.kind} {name!r}: metadata.{key} must map strings to strings "
                f"(got {json.dumps(value)[:200]}) — quote numbers and booleans in YAML"
            )


def _server_defaults(rt: ResourceType, obj: JsonObject) -> None:
    """Fields a real server fills in on every write."""
    if rt.plural == "namespaces":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"][
            "name"
        ]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        rv, start = data["rv"], data["start"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise errors.bad_request(
            f"continue key is not valid: {token!r} is not a token returned by a previous list"
        ) from exc
    if not isinstance(rv, int) or not isinstance(start, str) or data.get("v") != "meta.k8s.io/v1":
        raise errors.bad_request(f"continue key is not valid: {token!r} has an unknown format")
    return rv, start


@dataclass(frozen=True)
class ListResult:
    items: list[JsonObject]
    resource_version: int
    continue_token: str
    remaining: int | None


class Store:
    def __init__(self, max_history: int = 1000) -> None:
        self._lock = threading.RLock()
        self._rv = 0
        self._objects: dict[ResourceType, dict[tuple[str, str], JsonObject]] = {}
        self._history: deque[Event] = deque()
        self._max_history = max_history
        self._oldest_rv = 0
        self._watchers: set[Watcher] = set()

    def locked(self) -> AbstractContextManager[bool]:
        """Hold the store's lock across several calls (read-modify-write, as PATCH does)."""
        return self._lock

    # -- reads ----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    @property
    def oldest_rv(self) -> int:
        with self._lock:
            return self._oldest_rv

    def get(self, rt: ResourceType, namespace: str, name: str) -> JsonObject:
        with self._lock:
            obj = self._objects.get(rt, {}).get((namespace if rt.namespaced else "", name))
            if obj is None:
                raise errors.not_found(rt, name)
            return copy.deepcopy(obj)

    def exists(self, rt: ResourceType, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace if rt.namespaced else "", name) in self._objects.get(rt, {})

    def _state_at(self, rt: ResourceType, rv: int) -> dict[tuple[str, str], JsonObject]:
        """The objects of ``rt`` as they were at version ``rv`` (history undone backwards)."""
        if rv < self._oldest_rv:
            raise errors.expired(f"too old resource version: {rv} ({self._oldest_rv})")
        state = dict(self._objects.get(rt, {}))
        for ev in reversed(self._history):
            if ev.rv <= rv:
                break
            if ev.resource is not rt:
                continue
            key = object_key(rt, ev.obj)
            if ev.type == "ADDED":
                state.pop(key, None)
            else:
                assert ev.prev is not None
                state[key] = ev.prev
        return state

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        selector: Selector,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str = "",
        resource_version_match: str = "",
    ) -> ListResult:
        with self._lock:
            start = ""
            if continue_token:
                if resource_version not in ("", "0"):
                    raise errors.bad_request(
                        "specifying resource version is not allowed when using continue"
                    )
                snap_rv, start = _decode_continue(continue_token)
                if snap_rv < self._oldest_rv:
                    raise errors.expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter, or use "
                        "the continue token in this response to retrieve the remainder of the "
                        "results. Continuing with the provided token results in an inconsistent "
                        "list - objects that were created, modified, or deleted between the time "
                        "the first chunk was returned and now may show up in the list."
                    )
                state = self._state_at(rt, snap_rv)
            elif resource_version in ("", "0"):
                snap_rv, state = self._rv, self._objects.get(rt, {})
            else:
                try:
                    wanted = int(resource_version)
                except ValueError as exc:
                    raise errors.bad_request(
                        f"resourceVersion {resource_version!r} is not a valid resource version "
                        "(expected a number returned by the server)"
                    ) from exc
                if wanted > self._rv:
                    raise ApiError(
                        504,
                        f"Too large resource version: {wanted}, current: {self._rv}",
                        reason="Timeout",
                        details={
                            "causes": [
                                {
                                    "reason": "ResourceVersionTooLarge",
                                    "message": "Too large resource version",
                                }
                            ],
                            "retryAfterSeconds": 1,
                        },
                    )
                if resource_version_match == "Exact":
                    snap_rv, state = wanted, self._state_at(rt, wanted)
                else:
                    snap_rv, state = self._rv, self._objects.get(rt, {})
            keys = sorted(
                k
                for k in state
                if (namespace is None or k[0] == namespace) and (not start or "/".join(k) > start)
            )
            matching = [state[k] for k in keys if selector.matches(state[k])]
            token, remaining = "", None
            if limit is not None and limit > 0 and len(matching) > limit:
                remaining = len(matching) - limit
                matching = matching[:limit]
                token = _encode_continue(snap_rv, "/".join(object_key(rt, matching[-1])))
            return ListResult(copy.deepcopy(matching), snap_rv, token, remaining)

    # -- writes ---------------------------------------------------------------------------------

    def _record(self, ev: Event) -> None:
        self._history.append(ev)
        while len(self._history) > self._max_history:
            self._oldest_rv = self._history.popleft().rv
        for w in list(self._watchers):
            if w.closed:
                self._watchers.discard(w)
            elif w.wants(ev):
                w.pending.append(ev)
                w.notify()

    def _stamp(self, obj: JsonObject) -> JsonObject:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return obj

    def create(
        self, rt: ResourceType, obj: JsonObject, *, keep_identity: bool = False
    ) -> JsonObject:
        """Store a new object. ``keep_identity`` keeps a given uid and creationTimestamp (test
        hooks loading fixtures); the API path assigns them, as a real server does."""
        obj = copy.deepcopy(obj)
        meta = _meta(obj)
        if not meta.get("name") and isinstance(meta.get("generateName"), str):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        validate_object(rt, obj)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        with self._lock:
            key = object_key(rt, obj)
            bucket = self._objects.setdefault(rt, {})
            if key in bucket:
                raise errors.already_exists(rt, key[1])
            if not (keep_identity and meta.get("uid")):
                meta["uid"] = str(uuid.uuid4())
            if not (keep_identity and meta.get("creationTimestamp")):
                meta["creationTimestamp"] = now_rfc3339()
            if not rt.namespaced:
                meta.pop("namespace", None)
            if rt.has_generation:
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            _server_defaults(rt, obj)
            for stale in ("deletionTimestamp", "selfLink"):
                meta.pop(stale, None)
            self._stamp(obj)
            bucket[key] = obj
            self._record(Event(self._rv, "ADDED", rt, obj, None))
            return copy.deepcopy(obj)

    def update(
        self,
        rt: ResourceType,
        obj: JsonObject,
        *,
        check_version: bool = True,
        keep_identity: bool = False,
        part: UpdatePart = "all",
    ) -> JsonObject:
        """Replace an existing object. With ``check_version``, a ``metadata.resourceVersion`` in
        ``obj`` that is not the stored one is ``409 Conflict`` (optimistic concurrency).

        ``part`` is what the write may change, for resources with a status subresource: "main"
        (the resource's own endpoint: ``status`` is kept as stored), "status" (the ``/status``
        endpoint: only ``status`` changes) or "all" (test hooks)."""
        obj = copy.deepcopy(obj)
        validate_object(rt, obj)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        with self._lock:
            key = object_key(rt, obj)
            bucket = self._objects.setdefault(rt, {})
            old = bucket.get(key)
            if old is None:
                raise errors.not_found(rt, key[1])
            old_meta = old["metadata"]
            if rt.status_subresource and part == "main":
                obj.pop("status", None)
                if "status" in old:
                    obj["status"] = copy.deepcopy(old["status"])
            elif rt.status_subresource and part == "status":
                given, new_status = obj["metadata"], obj.get("status")
                obj = {k: copy.deepcopy(v) for k, v in old.items() if k != "status"}
                obj["metadata"] = {
                    **obj["metadata"],
                    "resourceVersion": given.get("resourceVersion"),
                    "uid": given.get("uid"),
                }
                if new_status is not None:
                    obj["status"] = new_status
            meta = obj["metadata"]
            given = meta.get("resourceVersion")
            if check_version and given not in (None, "") and given != old_meta["resourceVersion"]:
                raise errors.conflict(rt, key[1])
            if check_version and meta.get("uid") not in (None, "", old_meta["uid"]):
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on {rt.qualified} "{key[1]}": Precondition '
                    f"failed: UID in precondition: {meta['uid']}, UID in object meta: "
                    f"{old_meta['uid']}",
                    reason="Conflict",
                )
            if not (keep_identity and meta.get("uid")):
                meta["uid"] = old_meta["uid"]
            if not (keep_identity and meta.get("creationTimestamp")):
                meta["creationTimestamp"] = old_meta["creationTimestamp"]
            if not rt.namespaced:
                meta.pop("namespace", None)
            _server_defaults(rt, obj)
            if rt.has_generation:
                generation = int(old_meta.get("generation", 1))
                meta["generation"] = (
                    generation + 1 if _spec_part(obj) != _spec_part(old) else generation
                )
            else:
                meta.pop("generation", None)
            if {**obj, "metadata": {**meta, "resourceVersion": old_meta["resourceVersion"]}} == old:
                # a no-op write keeps the version and sends no event, as on a real server
                return copy.deepcopy(old)
            self._stamp(obj)
            bucket[key] = obj
            self._record(Event(self._rv, "MODIFIED", rt, obj, old))
            return copy.deepcopy(obj)

    def apply(self, rt: ResourceType, obj: JsonObject) -> JsonObject:
        """Create, or replace whatever is stored under the same name (test hook semantics)."""
        with self._lock:
            key = object_key(rt, obj)
            if key in self._objects.get(rt, {}):
                return self.update(rt, obj, check_version=False, keep_identity=True)
            return self.create(rt, obj, keep_identity=True)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        precondition_rv: str | None = None,
        precondition_uid: str | None = None,
    ) -> JsonObject:
        with self._lock:
            key = (namespace if rt.namespaced else "", name)
            bucket = self._objects.get(rt, {})
            old = bucket.get(key)
            if old is None:
                raise errors.not_found(rt, name)
            meta = old["metadata"]
            if precondition_uid and precondition_uid != meta["uid"]:
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on {rt.qualified} "{name}": Precondition '
                    f"failed: UID in precondition: {precondition_uid}, UID in object meta: "
                    f"{meta['uid']}",
                    reason="Conflict",
                )
            if precondition_rv and precondition_rv != meta["resourceVersion"]:
                raise errors.conflict(rt, name)
            del bucket[key]
            gone = {**old, "metadata": dict(meta)}
            self._stamp(gone)
            self._record(Event(self._rv, "DELETED", rt, gone, old))
            return copy.deepcopy(gone)

    # -- history and watches --------------------------------------------------------------------

    def compact(self) -> int:
        """Forget all history: any version before now is expired. Returns the current version."""
        with self._lock:
            self._history.clear()
            self._oldest_rv = self._rv
            return self._rv

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        selector: Selector,
        since: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Watcher, list[tuple[EventType, JsonObject]], int]:
        """Register a watcher. ``since`` None means "current state, then changes": the initial
        list is returned as synthetic ADDED events. Returns the watcher, the events to send
        first, and the version they bring the client to."""
        with self._lock:
            w = Watcher(rt, namespace, selector, loop)
            first: list[tuple[EventType, JsonObject]] = []
            if since is None:
                state = self._objects.get(rt, {})
                for key in sorted(state):
                    obj = state[key]
                    if (namespace is None or key[0] == namespace) and selector.matches(obj):
                        first.append(("ADDED", copy.deepcopy(obj)))
            else:
                if since < self._oldest_rv:
                    raise errors.expired(f"too old resource version: {since} ({self._oldest_rv})")
                for ev in self._history:
                    if ev.rv > since and w.wants(ev):
                        seen = translate(ev, selector)
                        if seen is not None:
                            first.append((seen[0], copy.deepcopy(seen[1])))
            self._watchers.add(w)
            return w, first, self._rv

    def take(self, w: Watcher) -> tuple[list[Event], int, bool]:
        """Everything queued for ``w``, the global version it is now current to, and whether
        the watch was closed by the server."""
        with self._lock:
            events = list(w.pending)
            w.pending.clear()
            w.wake.clear()
            return events, self._rv, w.closed

    def unwatch(self, w: Watcher) -> None:
        with self._lock:
            w.closed = True
            self._watchers.discard(w)

    def close_watches(self) -> int:
        """End every open watch (what an API server restart does to clients). Returns how many."""
        with self._lock:
            watchers = list(self._watchers)
            self._watchers.clear()
            for w in watchers:
                w.closed = True
                w.notify()
            return len(watchers)

    def objects(self, rt: ResourceType) -> Iterable[JsonObject]:
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self._objects.get(rt, {}).items())]
