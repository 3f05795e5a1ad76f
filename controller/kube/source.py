"""The Kubernetes config source: list and watch, cluster-wide, every kind
:func:`controller.translate.translate` understands, and translate what they hold.

Each resource kind has one worker thread (the client blocks) that loops: list (paged) when the
:class:`~meshapi.kubewatch.Reflector` has no resume point, else watch from its resourceVersion
with bookmarks and a short ``timeoutSeconds`` (so a stop is noticed within seconds even when the
socket shutdown below is not). Errors back off with :class:`~meshapi.backoff.Backoff`; a 410
(expired resourceVersion), as an ERROR event or as the watch's HTTP status, relists.

Invariants:

* A reflector is touched only under its lock; the event loop reads the stores under the same
  locks when it translates. Stored objects are never mutated (each event brings a new dict).
* Threads only notify the loop (``call_soon_threadsafe``); the loop snapshots the stores and
  translates in a worker thread, once per burst of changes (``debounce``), so a relist of a
  thousand objects gives one translation and the loop never stalls on it.
* No translation (and so readiness) before every kind has listed once.
* ``run`` returns only after every worker thread ended: on stop, open watch responses are shut
  down and backoff waits interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from controller.errors import KubeError
from controller.kube.client import KubeClient, Resource, WatchStream
from controller.metrics import Metrics
from controller.source import IssueLog
from controller.translate import (
    KIND_ENDPOINT_SLICE,
    Accepted,
    ConfigIssue,
    ObjectKey,
    SourceObject,
    Translation,
    translate,
)
from meshapi.backoff import Backoff
from meshapi.constants import DEFAULT_ROOT_NAMESPACE
from meshapi.kubewatch import KubeObjectRaw, KubeWatchError, Reflector, Step, parse_list
from meshapi.policy import API_VERSION as POLICY_API_VERSION
from meshapi.policy import KIND_AUTHZ, KIND_PEER_AUTHN

log = logging.getLogger(__name__)

WATCHED: Final = (
    Resource("Namespace", "v1", "namespaces"),
    Resource("Pod", "v1", "pods"),
    Resource("Service", "v1", "services"),
    Resource("ServiceAccount", "v1", "serviceaccounts"),
    Resource(KIND_ENDPOINT_SLICE, "discovery.k8s.io/v1", "endpointslices"),
    Resource(KIND_AUTHZ, POLICY_API_VERSION, "authorizationpolicies"),
    Resource(KIND_PEER_AUTHN, POLICY_API_VERSION, "peerauthentications"),
)
#: a watch that ends this soon without an event is followed by a (growing) pause
MIN_HEALTHY_WATCH_SECONDS: Final = 1.0


def source_name(obj: KubeObjectRaw) -> str:
    """How configuration errors name a Kubernetes object (``kubernetes:Kind/ns/name``)."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace", "")
    where = f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", "")
    return f"kubernetes:{obj.get('kind', '')}/{where}"


class _Watcher:
    """List+watch of one resource in a worker thread."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        metrics: Metrics,
        notify: Callable[[], None],
        stop: threading.Event,
        watch_timeout: int,
        page_size: int,
        backoff: Backoff,
    ) -> None:
        self.resource = resource
        self.reflector = Reflector(resource.kind, resource.api_version)
        self.lock = threading.Lock()
        self._client = client
        self._metrics = metrics
        self._notify = notify
        self._stop = stop
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._backoff = backoff
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self.lists = 0
        self.restarts = 0
        self.errors = 0
        self.thread = threading.Thread(
            target=self._run, name=f"kube-watch-{resource.plural}", daemon=True
        )

    @property
    def label(self) -> str:
        return self.resource.plural

    def interrupt(self) -> None:
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.interrupt()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                needs_list = self.reflector.needs_list
            try:
                if needs_list:
                    self._list()
                else:
                    self._watch()
            except (KubeError, KubeWatchError) as exc:
                if self._stop.is_set():
                    break
                status = exc.status if isinstance(exc, KubeError) else None
                self._failed(status, str(exc))
            except Exception as exc:  # a dead thread would freeze this kind forever
                if self._stop.is_set():
                    break
                log.exception("event=kube_watch_bug resource=%s", self.label)
                self._failed(None, f"unexpected {type(exc).__name__}: {exc}")

    def _failed(self, status: int | None, message: str, *, record: bool = True) -> None:
        """Count, log, and back off; ``record``: tell the reflector (which decides between
        relist and retry), unless it already knows (an ERROR event)."""
        self.errors += 1
        self._metrics.watch_errors.labels(self.label).inc()
        with self.lock:
            step = self.reflector.watch_failed(status, message) if record else Step.RETRY
        delay = self._backoff.next()
        log.warning(
            "event=kube_watch_error resource=%s status=%s next=%s retry_in=%.2fs error=%r",
            self.label,
            status,
            step.value,
            delay,
            message,
        )
        self._stop.wait(delay)

    def _list(self) -> None:
        items: list[KubeObjectRaw] = []
        resource_version = ""
        token = ""
        while True:
            page = parse_list(self._client.list_page(self.resource, self._page_size, token))
            items.extend(page.items)
            resource_version = resource_version or page.resource_version
            token = page.continue_token
            if not token or self._stop.is_set():
                break
        if self._stop.is_set():
            return
        with self.lock:
            step = self.reflector.replace(items, resource_version)
        self.lists += 1
        self._metrics.watch_relists.labels(self.label).inc()
        self._backoff.reset()
        log.info(
            "event=kube_listed resource=%s objects=%d resource_version=%s",
            self.label,
            len(items),
            resource_version,
        )
        if step is Step.CHANGED:
            self._notify()

    def _watch(self) -> None:
        with self.lock:
            resource_version = self.reflector.resource_version
        if resource_version is None:
            return
        started = time.monotonic()
        stream = self._client.watch(self.resource, resource_version, self._watch_timeout)
        with self._stream_lock:
            self._stream = stream
        if self._stop.is_set():
            stream.interrupt()
        events = 0
        try:
            for event in stream:
                events += 1
                self._metrics.watch_events.labels(self.label).inc()
                with self.lock:
                    step = self.reflector.apply(event)
                    error = self.reflector.last_error
                if step is Step.CHANGED:
                    self._notify()
                elif step is Step.RELIST:
                    log.info(
                        "event=kube_watch_expired resource=%s action=relist error=%r",
                        self.label,
                        error,
                    )
                    return
                elif step is Step.RETRY:
                    self._failed(None, f"watch ERROR event: {error}", record=False)
                    return
                if self._stop.is_set():
                    return
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()
        if self._stop.is_set():
            return
        self.restarts += 1
        self._metrics.watch_restarts.labels(self.label).inc()
        if events == 0 and time.monotonic() - started < MIN_HEALTHY_WATCH_SECONDS:
            # not an error (an API server restart ends every watch), but a server that ends
            # watches at once must not get a request loop: pause, longer each time
            delay = self._backoff.next()
            log.debug("event=kube_watch_ended_early resource=%s pause=%.2fs", self.label, delay)
            self._stop.wait(delay)
        elif events:
            self._backoff.reset()

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "kind": self.resource.kind,
                "synced": self.reflector.synced,
                "resourceVersion": self.reflector.resource_version,
                "objects": len(self.reflector.store),
                "lists": self.lists,
                "watchRestarts": self.restarts,
                "errors": self.errors,
                "lastError": self.reflector.last_error or None,
            }


class KubeSource:
    """Watches the cluster and hands every new :class:`Translation` to ``on_change``."""

    def __init__(
        self,
        client: KubeClient,
        trust_domain: str,
        on_change: Callable[[Translation], None],
        metrics: Metrics,
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        debounce: float = 0.05,
        watch_timeout: int = 5,
        page_size: int = 500,
        resources: Sequence[Resource] = WATCHED,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._client = client
        self._trust_domain = trust_domain
        self._root_namespace = root_namespace
        self._on_change = on_change
        self._metrics = metrics
        self._debounce = debounce
        self._stop = threading.Event()
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_good: dict[ObjectKey, Accepted] = {}
        self._issues = IssueLog(metrics)
        self._loaded = False
        self._watchers = [
            _Watcher(
                client,
                r,
                metrics,
                self._notify,
                self._stop,
                watch_timeout,
                page_size,
                backoff(),
            )
            for r in resources
        ]

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def errors(self) -> tuple[ConfigIssue, ...]:
        return self._issues.errors

    @property
    def warnings(self) -> tuple[ConfigIssue, ...]:
        return self._issues.warnings

    def status(self) -> Mapping[str, Any]:
        return {
            "source": "kubernetes",
            "apiServer": self._client.host,
            "resources": {w.label: w.status() for w in self._watchers},
        }

    def synced(self) -> bool:
        return all(w.status()["synced"] for w in self._watchers)

    # ---- threads → loop ----------------------------------------------------------------------

    def _notify(self) -> None:
        """Called from worker threads."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._changed)
            except RuntimeError:
                pass  # the loop closed between the check and the call: we are stopping

    def _changed(self) -> None:
        self._dirty.set()

    def _snapshot(self) -> list[SourceObject] | None:
        """Every stored object, or None while some kind has not listed yet."""
        objects: list[SourceObject] = []
        for w in self._watchers:
            with w.lock:
                if not w.reflector.synced:
                    return None  # the list's own notification translates later
                stored = list(w.reflector.store.values())
            objects.extend(SourceObject(source_name(o), 0, o) for o in stored)
        objects.sort(key=lambda o: o.source)
        return objects

    async def _translate(self) -> None:
        objects = self._snapshot()
        if objects is None:
            return
        # pure but not cheap (about 0.1 s for a thousand pods): keep it off the event loop
        result = await asyncio.to_thread(
            translate,
            objects,
            trust_domain=self._trust_domain,
            last_good=self._last_good,
            root_namespace=self._root_namespace,
        )
        self._last_good = result.accepted
        self._issues.report(result.errors, result.warnings)
        self._metrics.translations.inc()
        first = not self._loaded
        self._loaded = True
        if first:
            log.info(
                "event=kube_config_loaded objects=%d workloads=%d services=%d errors=%d",
                len(objects),
                len(result.workloads),
                len(result.services),
                len(result.errors),
            )
        self._on_change(result)

    async def _translator(self, stop: asyncio.Event) -> None:
        """One translation per burst of changes: wait for a change, let the burst settle for
        ``debounce`` seconds, translate what the stores hold then."""
        while True:
            dirty = asyncio.ensure_future(self._dirty.wait())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({dirty, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (dirty, stopping):
                    f.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await f
            if stop.is_set():
                return
            await asyncio.sleep(self._debounce)
            self._dirty.clear()
            await self._translate()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        for w in self._watchers:
            w.thread.start()
        try:
            await self._translator(stop)
        finally:
            self._stop.set()
            for w in self._watchers:
                w.interrupt()
            await asyncio.to_thread(self._join)

    def _join(self) -> None:
        deadline = time.monotonic() + 10.0
        for w in self._watchers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
            if w.thread.is_alive():
                log.warning("event=kube_watch_thread_stuck resource=%s", w.label)
