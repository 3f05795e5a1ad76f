"""Leader election on a ``coordination.k8s.io/v1`` Lease (the rules: :mod:`controller.leader`).

Both replicas serve nodes; only the leader does single-writer work (creating the CA Secret,
publishing the root ConfigMap). :class:`LeaderElector` runs on the event loop and does each API
call in a worker thread.

Invariants:

* :attr:`LeaderElector.is_leader` is True only while the last successful write of the Lease is
  younger than ``lease_duration - RENEW_MARGIN`` (monotonic clock): a leader that cannot renew
  stops writing before any other replica may take over.
* Every write carries the resourceVersion it read: a concurrent writer makes it fail with 409,
  and the loser reads again.
* On stop, a leader releases the Lease (empty holder) so the other replica takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from controller.errors import KubeError, LeaderError
from controller.kube.client import LEASES, KubeClient
from controller.leader import (
    RENEW_MARGIN,
    Action,
    LeaseState,
    decide,
    lease_body,
    parse_lease,
    release_body,
)
from controller.metrics import Metrics

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        metrics: Metrics,
        *,
        lease_duration: float = 15.0,
        renew_interval: float = 5.0,
        retry_interval: float = 2.0,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        if not renew_interval < lease_duration - RENEW_MARGIN.total_seconds():
            raise ValueError("the renew interval must be well below the lease duration")
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._metrics = metrics
        self._duration = dt.timedelta(seconds=lease_duration)
        self._renew = renew_interval
        self._retry = dt.timedelta(seconds=retry_interval)
        self._clock = clock
        self._valid_until = 0.0
        self._was_leader = False
        self._holder = ""
        self._last_error = ""
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._valid_until

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def status(self) -> dict[str, Any]:
        return {
            "lease": f"{self.namespace}/{self.name}",
            "identity": self.identity,
            "leader": self.is_leader,
            "holder": self._holder or None,
            "lastError": self._last_error or None,
        }

    def _path(self) -> str:
        return LEASES.namespaced_path(self.namespace, self.name)

    def _read(self) -> LeaseState | None:
        body = self._client.get(self._path(), f"get {self.where}")
        return None if body is None else parse_lease(body, self.where)

    def _write(self, previous: LeaseState | None) -> bool:
        """Create or update the Lease for us; False if someone else wrote first (409)."""
        body = lease_body(
            self.name, self.namespace, self.identity, self._duration, self._clock(), previous
        )
        try:
            if previous is None:
                self._client.request(
                    "POST",
                    LEASES.namespaced_path(self.namespace),
                    f"create {self.where}",
                    body=body,
                )
            else:
                self._client.request("PUT", self._path(), f"update {self.where}", body=body)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _attempt(self) -> float:
        """One round (in a worker thread): returns seconds until the next round."""
        written_at = time.monotonic()
        state = self._read()
        decision = decide(state, self.identity, self._clock(), self._retry)
        self._holder = state.holder if state is not None else ""
        if decision.action is Action.FOLLOW:
            self._valid_until = 0.0
            return decision.wait.total_seconds()
        if self._write(state):
            self._valid_until = (
                written_at + self._duration.total_seconds() - RENEW_MARGIN.total_seconds()
            )
            self._holder = self.identity
            return self._renew
        self._valid_until = 0.0  # lost the race; read again soon
        return min(self._retry.total_seconds(), 0.2)

    def _update_status(self) -> None:
        leading = self.is_leader
        self._metrics.leader.set(1 if leading else 0)
        if leading != self._was_leader:
            self._was_leader = leading
            self._metrics.leader_transitions.inc()
            log.info(
                "event=leader_%s lease=%s/%s identity=%s",
                "acquired" if leading else "lost",
                self.namespace,
                self.name,
                self.identity,
            )
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    wait = await asyncio.to_thread(self._attempt)
                    self._last_error = ""
                except (KubeError, LeaderError) as exc:
                    self._last_error = str(exc)
                    log.warning(
                        "event=leader_election_error lease=%s error=%r", self.where, str(exc)
                    )
                    wait = self._retry.total_seconds()
                self._update_status()
                # wake up in time to notice our own expiry even if the API hangs
                if self.is_leader:
                    wait = min(wait, max(0.0, self._valid_until - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(wait, 0.01))
                self._update_status()
        finally:
            if self.is_leader:
                self._valid_until = 0.0
                with contextlib.suppress(KubeError, LeaderError, TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(self._release), 3.0)
            self._update_status()

    def _release(self) -> None:
        state = self._read()
        if state is None or state.holder != self.identity:
            return
        body = release_body(state, self.name, self.namespace, self._clock())
        self._client.request("PUT", self._path(), f"release {self.where}", body=body)
        log.info("event=leader_released lease=%s identity=%s", self.where, self.identity)

    async def wait_changed(self, within: float) -> None:
        """Until leadership changes or ``within`` seconds pass."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, within)
        finally:
            self._waiters.discard(waiter)
