"""Reconcile the pods of this node with their redirection rules and the ztunnel.

:func:`decide` is pure: from what is wanted (the node's workloads) and what is known (rules in each
pod netns, workloads last handed to the ztunnel, pods the ztunnel serves) it returns the actions,
in order. :class:`Agent` executes them against a :class:`~node_agent.redirect.Redirector` and a
ZDS connection and keeps per-pod status.

Invariants:

* A pod's redirection is in place *before* the ztunnel is told to serve it (``Apply`` precedes
  ``Add``); on removal the ztunnel lets go first (``Delete``), then the rules go (``Remove``).
* Only differences are acted on: a pod whose rules already equal its plan is not re-applied; a pod
  the ztunnel already serves is only ``Keep``-ed in the snapshot after (re)connecting.
* Nothing is decided before the discovery stream has synced once, so a restarted agent never
  withdraws pods because it does not know them yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from meshapi.backoff import Backoff
from meshapi.model import Workload
from node_agent.errors import AgentError, NetnsError, ZdsError
from node_agent.metrics import REDIRECT_OPERATIONS, AgentMetrics
from node_agent.redirect import Redirector
from node_agent.redirect.plan import EMPTY, Plan, Settings, plan_for_pod
from node_agent.zds import ZdsRejected

log = logging.getLogger(__name__)

#: how soon a pod in error (netns missing, ztunnel refused) is retried
RETRY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Apply:
    workload: Workload
    plan: Plan


@dataclass(frozen=True, slots=True)
class Remove:
    uid: str
    netns: str


@dataclass(frozen=True, slots=True)
class Add:
    workload: Workload


@dataclass(frozen=True, slots=True)
class Keep:
    workload: Workload


@dataclass(frozen=True, slots=True)
class Delete:
    uid: str


@dataclass(frozen=True, slots=True)
class SnapshotComplete:
    pass


@dataclass(frozen=True, slots=True)
class Report:
    """A pod that cannot be acted on as it is (e.g. no netns known)."""

    workload: Workload
    error: str


Action = Apply | Remove | Add | Keep | Delete | SnapshotComplete | Report


def decide(
    local: Mapping[str, Workload],
    rules: Mapping[str, Plan],
    added: Mapping[str, Workload],
    served: frozenset[str],
    settings: Settings,
    snapshot: bool,
) -> list[Action]:
    """The actions that bring this node to the wanted state.

    ``local``: workloads scheduled on this node (enrolled or not). ``rules``: our rules known to
    be in each pod netns (missing key: unknown). ``added``: the workload last handed to (or kept
    by) the ztunnel. ``served``: the pods the ztunnel serves now. ``snapshot``: this is the first
    pass after ``hello`` and must end with ``SnapshotComplete``.
    """
    actions: list[Action] = []
    wanted = {uid: w for uid, w in local.items() if w.enrolled}
    for uid in sorted(wanted):
        w = wanted[uid]
        if w.netns is None:
            actions.append(Report(w, "no network namespace known for the pod"))
            continue
        try:
            plan = plan_for_pod(w.ip, settings)
        except ValueError as exc:
            actions.append(Report(w, str(exc)))
            continue
        changed = uid in added and added[uid] != w
        if rules.get(uid) != plan or changed:
            actions.append(Apply(w, plan))
        if uid in served and not changed:
            if snapshot or uid not in added:
                actions.append(Keep(w))
        else:
            actions.append(Add(w))
    stale = (served | set(added) | {u for u, p in rules.items() if p != EMPTY}) - set(wanted)
    for uid in sorted(stale):
        if uid in served:
            actions.append(Delete(uid))
        known = local.get(uid) or added.get(uid)
        if rules.get(uid, EMPTY) != EMPTY and known is not None and known.netns is not None:
            actions.append(Remove(uid, known.netns))
    if snapshot:
        actions.append(SnapshotComplete())
    return actions


class ZtunnelSession(Protocol):
    """What the agent needs from one ZDS connection (:class:`node_agent.zds.ZdsConnection`)."""

    served: set[str]
    closed: asyncio.Event

    async def add(self, workload: Workload, netns_fd: int) -> None: ...
    async def keep(self, uid: str) -> None: ...
    async def delete(self, uid: str) -> None: ...
    async def snapshot_complete(self) -> None: ...


class WorkloadSource(Protocol):
    """The node's view of the mesh (the discovery client)."""

    @property
    def workloads(self) -> Mapping[str, Workload]: ...

    async def wait_synced(self) -> None: ...


@dataclass
class PodStatus:
    uid: str
    name: str
    namespace: str
    ip: str
    netns: str | None
    mode: str
    status: str = "pending"  # pending | redirected | error | removed
    in_ztunnel: bool = False
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    #: seconds from the start of the pod's redirection to the ztunnel's ack of its listeners,
    #: the last time it was enrolled (the enrollment latency the benchmark reports)
    enroll_seconds: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "uid": self.uid, "name": self.name, "namespace": self.namespace, "ip": self.ip,
            "netns": self.netns, "mode": self.mode, "status": self.status,
            "ztunnel": self.in_ztunnel, "lastError": self.last_error, "since": self.since,
            "enrollSeconds": self.enroll_seconds,
        }


#: pod IP -> the source address of the node's probes towards it (node_agent.hostroute)
ProbeSource = Callable[[ipaddress.IPv4Address], ipaddress.IPv4Address | None]

Connect = Callable[[Callable[[], None]], Awaitable[AbstractAsyncContextManager[ZtunnelSession]]]


class Agent:
    """Executes :func:`decide` whenever the workloads change or the ztunnel (re)connects."""

    def __init__(
        self,
        node: str,
        settings: Settings,
        redirector: Redirector,
        source: WorkloadSource,
        connect: Connect,
        on_status: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        probe_source: ProbeSource | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.node = node
        self.metrics = metrics or AgentMetrics()
        self.metrics.watch_pod_states(lambda: [p.status for p in self.pods.values()])
        for operation in REDIRECT_OPERATIONS:
            self.metrics.redirection_errors.labels(redirector.mode, operation)
        self.settings = settings
        #: ``--host-probe-ip auto``: finds the probes' source address from a pod's IP
        self._probe_source = probe_source
        self.redirector = redirector
        self.source = source
        self._connect = connect
        self._on_status = on_status
        # a local socket: retry fast so a restarted ztunnel gets its pods back within a second
        self._backoff = backoff or Backoff(base=0.05, cap=1.0)
        self._wake = asyncio.Event()
        self.rules: dict[str, Plan] = {}
        self.added: dict[str, Workload] = {}
        self.pods: dict[str, PodStatus] = {}
        self.ztunnel_connected = False
        self.ztunnel_error: str | None = None
        #: replaced (after being set) whenever pod or connection state changes
        self._pulse = asyncio.Event()

    def _status_changed(self) -> None:
        self._on_status()
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    def redirected(self, uid: str, netns: str | None = None) -> bool:
        """True if the pod's rules are in place and the ztunnel serves it (in ``netns``, if
        given: a recreated sandbox keeps the pod UID but gets a new netns)."""
        w = self.source.workloads.get(uid)
        if w is None or w.node != self.node or not w.enrolled or (
            netns is not None and w.netns != netns
        ):
            return False
        st = self.pods.get(uid)
        return self._ok(uid, w) and st is not None and st.status == "redirected"

    async def wait_redirected(self, uid: str, netns: str | None, within: float) -> None:
        """Return once :meth:`redirected`; raise AgentError with the pod's last error (or the
        ztunnel's) after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while not self.redirected(uid, netns):
                    await self._pulse.wait()
        except TimeoutError:
            st = self.pods.get(uid)
            if st is not None and st.last_error:
                why = st.last_error
            elif not self.ztunnel_connected:
                why = f"the ztunnel is not connected ({self.ztunnel_error or 'not yet'})"
            elif st is None:
                why = "the pod is not enrolled or not known on this node"
            else:
                why = f"still {st.status}"
            raise AgentError(f"pod not redirected within {within:g}s: {why}") from None

    async def uninstall(self) -> int:
        """The mesh is being removed from this node: take the redirection out of every pod we
        know of, whether or not the ztunnel is still there, so pods keep working unmeshed.
        Returns how many pods were released."""
        netns = {uid: w.netns for uid, w in self.local().items() if w.netns is not None}
        netns.update({uid: w.netns for uid, w in self.added.items() if w.netns is not None})
        released = 0
        for uid in sorted(netns):
            if self.rules.get(uid, EMPTY) == EMPTY and uid not in self.added:
                continue
            try:
                await self.redirector.remove(netns[uid])
            except NetnsError:
                pass  # the pod is gone
            except AgentError as exc:
                self._redirection_error("remove")
                log.error("uninstall: cannot remove the redirection of pod %s: %s", uid, exc)
                continue
            self.rules.pop(uid, None)
            released += 1
        return released

    def notify(self) -> None:
        """The workloads changed: reconcile soon."""
        self._wake.set()

    def local(self) -> dict[str, Workload]:
        return {u: w for u, w in self.source.workloads.items() if w.node == self.node}

    async def observe(self) -> None:
        """Read the rules already in every local pod's netns (after an agent restart), and drop
        redirection state kept for netns that are no longer wanted pods (deleted meanwhile)."""
        live = [w.netns for w in self.local().values() if w.enrolled and w.netns is not None]
        try:
            if dropped := await self.redirector.collect(live):
                log.info("removed the redirection state of %d pod(s) gone meanwhile", dropped)
        except AgentError as exc:
            log.warning("cannot collect stale redirection state: %s", exc)
        for uid, w in sorted(self.local().items()):
            if w.netns is None:
                continue
            try:
                self.rules[uid] = await self.redirector.read(w.netns)
            except AgentError as exc:
                log.warning("cannot read rules of pod %s/%s: %s", w.namespace, w.name, exc)

    async def run(self) -> None:
        await self.source.wait_synced()
        await self.observe()
        while True:
            try:
                session_cm = await self._connect(self._wake.set)
                async with session_cm as session:
                    self.ztunnel_connected, self.ztunnel_error = True, None
                    self.metrics.zds_connected.set(1)
                    self._backoff.reset()
                    await self.sync(session, snapshot=True)
                    while not session.closed.is_set():
                        retry = any(p.status == "error" for p in self.pods.values())
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(RETRY_SECONDS if retry else None):
                                await self._wake.wait()
                        self._wake.clear()
                        if session.closed.is_set():
                            break
                        await self.sync(session, snapshot=False)
                    raise ZdsError("the ztunnel connection closed")
            except ZdsError as exc:
                self.ztunnel_connected, self.ztunnel_error = False, str(exc)
                self.metrics.zds_connected.set(0)
                self.metrics.zds_disconnects.inc()
                for p in self.pods.values():
                    p.in_ztunnel = False
                self._status_changed()
                delay = self._backoff.next()
                log.warning("ztunnel: %s; reconnecting in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    def _status(self, w: Workload) -> PodStatus:
        st = self.pods.get(w.key)
        if st is None:
            st = self.pods[w.key] = PodStatus(
                w.key, w.name, w.namespace, str(w.ip), w.netns, self.redirector.mode
            )
        st.name, st.namespace, st.ip, st.netns = w.name, w.namespace, str(w.ip), w.netns
        return st

    def _fail(self, w: Workload, error: str) -> None:
        st = self._status(w)
        if st.last_error != error:
            log.error("pod %s/%s: %s", w.namespace, w.name, error)
        st.status, st.last_error, st.since = "error", error, time.time()

    def _resolve_probe_source(self, local: Mapping[str, Workload]) -> None:
        """Follow the node's source address towards its pods (it is the same for every pod of
        a node with the CNIs we know); a change re-plans every pod."""
        if self._probe_source is None:
            return
        ips = sorted(w.ip for w in local.values() if w.enrolled)
        if not ips:
            return
        try:
            found = self._probe_source(ips[0])
        except AgentError as exc:
            log.warning("%s; kubelet probes keep the exemption they had", exc)
            return
        if found != self.settings.host_probe_ip:
            log.info("kubelet probes come from %s (the node's source address towards %s)",
                     found, ips[0])
            self.settings = dataclasses.replace(self.settings, host_probe_ip=found)

    async def sync(self, session: ZtunnelSession, snapshot: bool) -> None:
        """One reconcile pass. ZDS connection failures propagate (the caller reconnects)."""
        local = self.local()
        self._resolve_probe_source(local)
        actions = decide(
            local, self.rules, self.added, frozenset(session.served), self.settings, snapshot
        )
        failed: set[str] = set()
        started: dict[str, float] = {}
        for action in actions:
            match action:
                case Report(workload=w, error=error):
                    self._fail(w, error)
                case Apply(workload=w, plan=plan):
                    assert w.netns is not None
                    started[w.key] = time.monotonic()
                    try:
                        await self.redirector.apply(w.netns, plan, w.ip)
                    except AgentError as exc:
                        self._redirection_error("apply")
                        self.rules.pop(w.key, None)
                        failed.add(w.key)
                        self._fail(w, str(exc))
                    else:
                        self.rules[w.key] = plan
                case Add(workload=w):
                    if w.key in failed:
                        continue
                    started.setdefault(w.key, time.monotonic())
                    await self._add(session, w, failed)
                    if w.key not in failed:
                        took = time.monotonic() - started[w.key]
                        self._status(w).enroll_seconds = took
                        self.metrics.enroll_duration.observe(took)
                case Keep(workload=w):
                    await session.keep(w.key)
                    self.added[w.key] = w
                case Delete(uid=uid):
                    await session.delete(uid)
                    self.added.pop(uid, None)
                case Remove(uid=uid, netns=netns):
                    try:
                        await self.redirector.remove(netns)
                    except NetnsError:
                        pass  # the netns is gone, and its rules with it
                    except AgentError as exc:
                        self._redirection_error("remove")
                        log.error("removing rules of pod %s: %s", uid, exc)
                        continue
                    self.rules.pop(uid, None)
                case SnapshotComplete():
                    await session.snapshot_complete()
        wanted = {u for u, w in local.items() if w.enrolled}
        for uid, w in local.items():
            if uid in wanted and uid not in failed and self._ok(uid, w):
                st = self._status(w)
                if st.status != "redirected":
                    st.status, st.last_error, st.since = "redirected", None, time.time()
        for uid, st in list(self.pods.items()):
            st.in_ztunnel = uid in session.served
            if uid not in wanted:
                if uid in local or uid in self.rules:
                    st.status, st.since = "removed", time.time()
                else:
                    del self.pods[uid]
        self._status_changed()

    def _redirection_error(self, operation: str) -> None:
        self.metrics.redirection_errors.labels(self.redirector.mode, operation).inc()

    def _ok(self, uid: str, w: Workload) -> bool:
        return uid in self.rules and self.added.get(uid) == w

    async def _add(self, session: ZtunnelSession, w: Workload, failed: set[str]) -> None:
        assert w.netns is not None
        try:
            fd = os.open(w.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failed.add(w.key)
            self._fail(w, f"cannot open netns {w.netns}: {exc.strerror}")
            return
        try:
            await session.add(w, fd)
        except ZdsRejected as exc:
            failed.add(w.key)
            self._fail(w, str(exc))
            return
        finally:
            os.close(fd)
        self.added[w.key] = w
