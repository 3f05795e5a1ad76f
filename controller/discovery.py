"""Versioned discovery state and its fan-out to node subscribers (the server side of
:mod:`meshapi.discovery`).

Invariants:

* ``epoch`` is random per process; ``version`` grows by one per change of (workloads, services),
  and each change is recorded as a :class:`~meshapi.discovery.Delta` in a bounded history.
* A subscriber resuming from ``(epoch, version)`` gets exactly the deltas after ``version`` if the
  history still holds them, otherwise a snapshot; then every later delta, in order.
* Every subscriber queue is bounded: one that falls behind is closed (the node reconnects and
  resyncs) instead of making the controller buffer without limit.
* Nothing here does I/O; the aiohttp handler in :mod:`controller.server` drains subscriptions.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.metrics import Metrics
from meshapi.constants import DEFAULT_ROOT_NAMESPACE
from meshapi.discovery import Delta, Heartbeat, Snapshot, diff_to_delta
from meshapi.httppath import DEFAULT_PATH_NORMALIZATION, PathNormalization
from meshapi.ids import NodeName
from meshapi.model import Service, Workload
from meshapi.policy import AuthorizationPolicy, PeerAuthentication

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 1000
DEFAULT_QUEUE_SIZE = 1000


def encode(message: Snapshot | Delta | Heartbeat) -> bytes:
    return json.dumps(message.to_wire(), separators=(",", ":")).encode() + b"\n"


@dataclass(eq=False)
class Subscription:
    """One connected node. ``initial`` is sent first, then whatever arrives on the queue.
    ``closed_reason`` is set when the hub cut it (fell behind, shutdown)."""

    node: NodeName
    initial: list[bytes]
    queue: asyncio.Queue[bytes]
    resumed: bool
    #: set whenever something is queued or the subscription is closed
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    closed_reason: str = ""
    since: float = field(default_factory=time.time)

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed, self.closed_reason = True, reason
            self.wake.set()


class DiscoveryHub:
    def __init__(
        self,
        metrics: Metrics,
        history: int = DEFAULT_HISTORY,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        epoch: str | None = None,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
    ) -> None:
        self.epoch = epoch or secrets.token_hex(8)
        self.root_namespace = root_namespace
        self.path_normalization = path_normalization
        self.version = 0
        self.workloads: dict[str, Workload] = {}
        self.services: dict[str, Service] = {}
        self.authorization_policies: dict[str, AuthorizationPolicy] = {}
        self.peer_authentications: dict[str, PeerAuthentication] = {}
        self._history: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=history)
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._metrics = metrics
        self._closed = False

    @property
    def subscriptions(self) -> frozenset[Subscription]:
        return frozenset(self._subs)

    def update(
        self,
        workloads: Mapping[str, Workload],
        services: Mapping[str, Service],
        authorization_policies: Mapping[str, AuthorizationPolicy] | None = None,
        peer_authentications: Mapping[str, PeerAuthentication] | None = None,
    ) -> Delta | None:
        """Adopt a new state; returns the delta published (None if nothing changed). Policies
        left out (None) stay as they are."""
        authz = (
            self.authorization_policies
            if authorization_policies is None
            else dict(authorization_policies)
        )
        peer = self.peer_authentications if peer_authentications is None else dict(
            peer_authentications
        )
        delta = diff_to_delta(
            self.epoch,
            self.version + 1,
            self.workloads,
            workloads,
            self.services,
            services,
            self.authorization_policies,
            authz,
            self.peer_authentications,
            peer,
        )
        if delta is None:
            return None
        self.version = delta.version
        self.workloads = dict(workloads)
        self.services = dict(services)
        self.authorization_policies = authz
        self.peer_authentications = peer
        data = encode(delta)
        self._history.append((delta.version, data))
        self._metrics.config_version.set(self.version)
        log.info(
            "event=discovery_version version=%d upsert_workloads=%d upsert_services=%d "
            "remove_workloads=%d remove_services=%d policies_changed=%d subscribers=%d",
            delta.version,
            len(delta.upsert_workloads),
            len(delta.upsert_services),
            len(delta.remove_workloads),
            len(delta.remove_services),
            len(delta.upsert_authorization_policies)
            + len(delta.upsert_peer_authentications)
            + len(delta.remove_authorization_policies)
            + len(delta.remove_peer_authentications),
            len(self._subs),
        )
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(data)
                sub.wake.set()
            except asyncio.QueueFull:
                self._metrics.discovery_disconnects.inc()
                log.warning(
                    "event=discovery_slow_subscriber node=%s version=%d queue=%d",
                    sub.node,
                    self.version,
                    self._queue_size,
                )
                self._drop(sub, "fell behind")
        return delta

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.epoch,
            self.version,
            tuple(w for _, w in sorted(self.workloads.items())),
            tuple(s for _, s in sorted(self.services.items())),
            tuple(p for _, p in sorted(self.authorization_policies.items())),
            tuple(p for _, p in sorted(self.peer_authentications.items())),
            self.root_namespace,
            self.path_normalization,
        )

    def heartbeat(self) -> bytes:
        return encode(Heartbeat(self.epoch, self.version))

    def subscribe(
        self, node: NodeName, epoch: str | None = None, version: int | None = None
    ) -> Subscription:
        """Register a subscriber; what it must be sent first is in ``initial``."""
        initial = self._catch_up(epoch, version)
        resumed = initial is not None
        sub = Subscription(
            node,
            initial if initial is not None else [encode(self.snapshot())],
            asyncio.Queue(self._queue_size),
            resumed,
        )
        if self._closed:
            sub.close("controller shutting down")
        else:
            self._subs.add(sub)
        self._metrics.discovery_subscribers.set(len(self._subs))
        return sub

    def _catch_up(self, epoch: str | None, version: int | None) -> list[bytes] | None:
        if epoch != self.epoch or version is None or version > self.version:
            return None
        if version == self.version:
            return []
        needed = self.version - version
        if needed > len(self._history) or self._history[-needed][0] != version + 1:
            return None
        return [data for _, data in list(self._history)[-needed:]]

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        self._metrics.discovery_subscribers.set(len(self._subs))

    def _drop(self, sub: Subscription, reason: str) -> None:
        sub.close(reason)
        self.unsubscribe(sub)

    def close(self) -> None:
        """Shutdown: end every stream (nodes keep their state and reconnect later)."""
        self._closed = True
        for sub in list(self._subs):
            self._drop(sub, "controller shutting down")
