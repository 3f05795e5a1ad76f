"""Leader election on a ``coordination.k8s.io/v1`` Lease: the pure decisions (what to do with the
Lease as read, and the body to write). The I/O loop is :mod:`controller.kube.lease`.

The rules (those of client-go's leader election, which every controller in a cluster follows):

* No Lease → create it holding it ourselves (``409 AlreadyExists`` → someone else was faster).
* We hold it → renew: write ``renewTime = now`` with the ``metadata.resourceVersion`` we read
  (optimistic concurrency: ``409 Conflict`` means another replica wrote in between; we lost).
* Someone else holds it and ``renewTime + leaseDurationSeconds`` has passed (or the holder is
  empty: released) → take it over, ``leaseTransitions + 1``.
* Otherwise follow, and look again after the retry interval (sooner if the lease expires sooner).

Invariants:

* A replica considers itself leader only until ``last successful write + lease duration -
  RENEW_MARGIN`` (its own monotonic clock); past that it stops writing even if it could not yet
  tell that someone else took over, so two replicas never both believe they lead once clocks
  agree within the margin.
* Lease times are RFC 3339 MicroTime in UTC (``2006-01-02T15:04:05.000000Z``).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypedDict

from controller.errors import LeaderError

#: a leader stops writing this long before its lease would expire for the others
RENEW_MARGIN: Final = dt.timedelta(seconds=2)


class LeaseSpecRaw(TypedDict, total=False):
    holderIdentity: str
    leaseDurationSeconds: int
    acquireTime: str
    renewTime: str
    leaseTransitions: int


class LeaseMetaRaw(TypedDict, total=False):
    name: str
    namespace: str
    resourceVersion: str


class LeaseRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: LeaseMetaRaw
    spec: LeaseSpecRaw


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A Lease as read from the API."""

    holder: str
    duration: dt.timedelta
    acquire_time: dt.datetime | None
    renew_time: dt.datetime | None
    transitions: int
    resource_version: str

    def expires(self) -> dt.datetime | None:
        return None if self.renew_time is None else self.renew_time + self.duration


class Action(enum.Enum):
    CREATE = "create"
    RENEW = "renew"
    TAKE_OVER = "take_over"
    FOLLOW = "follow"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: for FOLLOW: how long until it is worth looking again
    wait: dt.timedelta = dt.timedelta(0)


def micro_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(spec: Mapping[str, object], key: str, where: str) -> dt.datetime | None:
    value = spec.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise LeaderError(f"{where}: spec.{key} is not a timestamp string: {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise LeaderError(f"{where}: spec.{key} {value!r} is not an RFC 3339 time") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _int(spec: Mapping[str, object], key: str, where: str, default: int) -> int:
    value = spec.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LeaderError(f"{where}: spec.{key} must be a non-negative integer, got {value!r}")
    return value


def parse_lease(body: object, where: str) -> LeaseState:
    """Validate a Lease read from the API (``where`` names it in errors)."""
    if not isinstance(body, Mapping):
        raise LeaderError(f"{where}: not a Lease object")
    meta = body.get("metadata")
    spec = body.get("spec")
    spec = {} if spec is None else spec
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise LeaderError(f"{where}: metadata and spec must be objects")
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        raise LeaderError(f"{where}: metadata.resourceVersion is missing")
    holder = spec.get("holderIdentity") or ""
    if not isinstance(holder, str):
        raise LeaderError(f"{where}: spec.holderIdentity must be a string")
    return LeaseState(
        holder=holder,
        duration=dt.timedelta(seconds=_int(spec, "leaseDurationSeconds", where, 0)),
        acquire_time=_time(spec, "acquireTime", where),
        renew_time=_time(spec, "renewTime", where),
        transitions=_int(spec, "leaseTransitions", where, 0),
        resource_version=rv,
    )


def decide(
    state: LeaseState | None, me: str, now: dt.datetime, retry: dt.timedelta
) -> Decision:
    if state is None:
        return Decision(Action.CREATE)
    if state.holder == me:
        return Decision(Action.RENEW)
    expires = state.expires()
    if not state.holder or expires is None or now >= expires:
        return Decision(Action.TAKE_OVER)
    return Decision(Action.FOLLOW, max(dt.timedelta(0), min(retry, expires - now)))


def lease_body(
    name: str,
    namespace: str,
    me: str,
    duration: dt.timedelta,
    now: dt.datetime,
    previous: LeaseState | None,
) -> LeaseRaw:
    """The Lease to create (``previous`` None) or to write over ``previous`` (renew or take over;
    carries its resourceVersion for optimistic concurrency)."""
    meta: LeaseMetaRaw = {"name": name, "namespace": namespace}
    acquire = now
    transitions = 0
    if previous is not None:
        meta["resourceVersion"] = previous.resource_version
        transitions = previous.transitions
        if previous.holder == me and previous.acquire_time is not None:
            acquire = previous.acquire_time
        elif previous.holder != me:
            transitions += 1
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": max(1, int(duration.total_seconds())),
            "acquireTime": micro_time(acquire),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        },
    }


def release_body(previous: LeaseState, name: str, namespace: str, now: dt.datetime) -> LeaseRaw:
    """What a leader writes when it stops: no holder, so the next replica takes over at once
    instead of waiting for the lease to expire."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": previous.resource_version,
        },
        "spec": {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "renewTime": micro_time(now),
            "leaseTransitions": previous.transitions,
        },
    }
