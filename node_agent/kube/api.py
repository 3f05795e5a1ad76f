"""The node agent's Kubernetes I/O, through the ``kubernetes`` client: list+watch of this node's
pods and of all namespaces, reads of single objects, and the redirection annotation.

The client is synchronous, so each watch runs on its own thread; the bookkeeping (resume point,
bookmarks, 410) is :class:`meshapi.kubewatch.Reflector`, which lives on that thread. After every
change the thread hands a *copy* of the store to the event loop (``call_soon_threadsafe``), so the
loop never reads a dict another thread writes.

Invariants: a watch resumes from the last resourceVersion it saw (bookmarks advance it) and lists
again only when the server says 410; errors back off with jitter (``meshapi.backoff``); objects
stay as decoded JSON (the client's model classes are never used); :meth:`Watch.stop` ends the
thread within a second (the open response is shut down).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from meshapi.backoff import Backoff
from meshapi.kubewatch import KubeWatchError, ObjectKey, Reflector, Step, parse_list
from node_agent.errors import AgentError
from node_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

#: a watch request ends after this long (the server closes it; we resume from our version)
WATCH_SECONDS = 60
LIST_PAGE = 500
MAX_EVENT_BYTES = 4 << 20
FIELD_MANAGER = "nodemesh-agent"


class KubeError(AgentError):
    """The Kubernetes API could not be reached or refused a request."""


def api_client(kubeconfig: Path | None) -> k8s.ApiClient:
    """A client from ``kubeconfig``, else the in-cluster service account, else $KUBECONFIG."""
    cfg = k8s.Configuration()
    try:
        if kubeconfig is not None:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=cfg
            )
        else:
            try:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=cfg
                )
            except ConfigException:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=cfg
                )
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config or $KUBECONFIG"
        raise KubeError(
            f"cannot load the Kubernetes client configuration ({where}): {exc}"
        ) from exc
    return k8s.ApiClient(cfg)


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def _lines(resp: urllib3.HTTPResponse) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(64 * 1024, decode_content=True):
        buf += chunk
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = buf[:nl], buf[nl + 1 :]
            if line.strip():
                yield line
        if len(buf) > MAX_EVENT_BYTES:
            raise KubeWatchError("event", f"a watch event exceeds {MAX_EVENT_BYTES} bytes")
    if buf.strip():
        yield buf


class Watch:
    """List+watch one resource on a thread; ``on_store`` gets each new store on the loop."""

    def __init__(
        self,
        name: str,
        call: Callable[..., Any],
        reflector: Reflector,
        on_store: Callable[[Mapping[ObjectKey, object]], None],
        loop: asyncio.AbstractEventLoop,
        backoff: Backoff | None = None,
        watch_seconds: int = WATCH_SECONDS,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.name = name
        # counters are thread-safe: this thread increments, the loop's scrape reads
        self._metrics = metrics
        self._call = call
        self.reflector = reflector
        self._on_store = on_store
        self._loop = loop
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self._watch_seconds = watch_seconds
        self._stop = threading.Event()
        self._resp: urllib3.HTTPResponse | None = None
        self._thread = threading.Thread(target=self._run, name=f"kube-watch-{name}", daemon=True)
        self.relists = 0
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except (OSError, AttributeError, ValueError) as exc:  # best effort: unblock a read
                log.debug("watch %s: shutdown: %s", self.name, exc)
        self._thread.join(timeout=5.0)

    def _publish(self) -> None:
        snapshot = dict(self.reflector.store)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_store, snapshot)

    def _list(self) -> None:
        items: list[object] = []
        cont: str | None = None
        while True:
            resp = self._call(limit=LIST_PAGE, _continue=cont, _preload_content=False,
                              _request_timeout=(10, 60))
            page = parse_list(json.loads(resp.data))
            items.extend(page.items)
            if not page.continue_token:
                break
            cont = page.continue_token
        self.reflector.replace(items, page.resource_version)
        self.relists += 1
        if self._metrics is not None:
            self._metrics.watch_relists.labels(self.name).inc()
        self._publish()

    def _watch(self) -> None:
        resp = self._call(
            watch=True,
            resource_version=self.reflector.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _preload_content=False,
            _request_timeout=(10, self._watch_seconds + 30),
        )
        self._resp = resp
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                step = self.reflector.apply(json.loads(line))
                if step is Step.CHANGED:
                    self._publish()
                elif step is Step.RELIST:
                    log.info("watch %s: %s; listing again", self.name, self.reflector.last_error)
                    return
                elif step is Step.RETRY:
                    raise KubeError(f"watch {self.name}: {self.reflector.last_error}")
                self._backoff.reset()
        finally:
            self._resp = None
            resp.release_conn()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.reflector.needs_list:
                    self._list()
                self._watch()
                continue
            except ApiException as exc:
                step = self.reflector.watch_failed(exc.status, _status_message(exc))
                if step is Step.RELIST and exc.status == 410:
                    continue
                error = f"{exc.status} {_status_message(exc)}"
            except (KubeError, KubeWatchError, ValueError, urllib3.exceptions.HTTPError,
                    OSError) as exc:
                if self._stop.is_set():
                    return
                error = str(exc) or type(exc).__name__
            self.errors += 1
            if self._metrics is not None:
                self._metrics.watch_errors.labels(self.name).inc()
            delay = self._backoff.next()
            log.warning("watch %s: %s; retrying in %.1fs", self.name, error, delay)
            self._stop.wait(delay)


class NodeApi:
    """What the agent asks of the API server (all blocking: call with ``asyncio.to_thread``)."""

    def __init__(self, api: k8s.ApiClient, node: str) -> None:
        self.client = api
        self.core = k8s.CoreV1Api(api)
        self.apps = k8s.AppsV1Api(api)
        self.node = node

    def pods_call(self) -> Callable[..., Any]:
        selector = f"spec.nodeName={self.node}"

        def call(**kw: Any) -> Any:
            return self.core.list_pod_for_all_namespaces(field_selector=selector, **kw)

        return call

    def namespaces_call(self) -> Callable[..., Any]:
        def call(**kw: Any) -> Any:
            return self.core.list_namespace(**kw)

        return call

    def _get(self, fn: Callable[..., Any], *args: str) -> dict[str, Any] | None:
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=(5, 15))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"GET {'/'.join(args)}: {exc.status} {_status_message(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"GET {'/'.join(args)}: {exc}") from exc
        body = json.loads(resp.data)
        if not isinstance(body, dict):
            raise KubeError(f"GET {'/'.join(args)}: the answer is not an object")
        return body

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self.core.read_namespaced_pod, name, namespace)

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        return self._get(self.core.read_namespace, name)

    def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self.apps.read_namespaced_daemon_set, name, namespace)

    def annotate_pod(self, namespace: str, name: str, key: str, value: str | None) -> None:
        body = {"metadata": {"annotations": {key: value}}}
        try:
            self.core.patch_namespaced_pod(
                name, namespace, body,
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=(5, 15),
            )
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise KubeError(
                f"annotating pod {namespace}/{name}: {exc.status} {_status_message(exc)}"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"annotating pod {namespace}/{name}: {exc}") from exc
