"""A fake Kubernetes API server for tests: real HTTPS, real list/watch protocol, one process.

Code under test talks to it through the real ``kubernetes`` client (or any HTTP client); tests
drive it through synchronous hooks. It serves the same Kubernetes-shaped YAML the local-source
tests use (``load_yaml``).

Starting it
-----------
In an async test (the server runs on the test's own loop, so a *synchronous* client must run in
a thread: ``await asyncio.to_thread(v1.list_namespaced_pod, "default")``)::

    async with FakeKubeApi(bookmark_interval=0.2) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")

In a sync test, or for a subprocess that needs a server (its own loop on a private thread)::

    with FakeKubeApi().running_in_thread() as api:
        client = kubernetes.config.new_client_from_config(str(api.write_kubeconfig(path)))

Constructor: ``FakeKubeApi(*, bookmark_interval=1.0, max_history=1000,
admin_token="admin-token", default_namespaces=("default", "kube-system", "kube-public",
"kube-node-lease"), api_audiences=(API_AUDIENCE,), resources=RESOURCES)``.

Connection details
------------------
* ``api.url`` — ``https://127.0.0.1:<port>``; ``api.ca_pem`` — PEM bytes of the per-fake CA
  (the server certificate covers ``127.0.0.1`` and ``localhost``); ``api.ca_file`` — the same
  as a file, valid while the server runs.
* ``api.write_kubeconfig(path, token=None, *, namespace=None) -> Path`` — a kubeconfig with the
  server URL, ``certificate-authority-data`` and a user with the bearer ``token`` (default: the
  admin token). Works with ``kubernetes.config.load_kube_config(path)`` and
  ``new_client_from_config(path)``.
* ``api.client_configuration(token=None) -> kubernetes.client.Configuration`` — the same, without
  a file (use it with ``kubernetes.client.ApiClient(cfg)``; close the client when done).
* ``api.admin_token`` — registered at start as ``system:admin`` in ``system:masters``.

Tokens, authorization, TokenReview
----------------------------------
* ``api.add_token(token, *, username, uid="", groups=("system:authenticated",), extra=None,
  audiences=None, allow=None) -> TokenInfo``. ``audiences=None`` means the API server's audience
  (``API_AUDIENCE``); a token registered only for other audiences is rejected (401) by the API
  but passes TokenReview for those audiences — as a projected service-account token does.
* ``api.restrict(token, allow)`` — ``allow`` is an iterable of ``(verb, resource)``; verbs are
  ``get list watch create update patch delete deletecollection``, resource the plural
  (``pods``) or ``plural.group``; ``"*"`` matches any. Denied → 403 ``Forbidden`` with the real
  message (``pods is forbidden: User "x" cannot list resource "pods" in API group "" in the
  namespace "default"``). ``allow=None`` lifts the restriction. ``api.remove_token(token)``.
* Every request needs ``Authorization: Bearer <registered token>``; otherwise 401 with a Status
  body (``reason: Unauthorized``) — the client raises ``ApiException(status=401)``.
* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` (caller authenticated and allowed
  ``create tokenreviews``) answers 201 with ``status`` = ``{"authenticated": true, "user":
  {"username", "uid", "groups", "extra"}, "audiences": [...]}``, or on failure ``{"user": {},
  "error": "..."}`` with **no** ``authenticated`` key (the client model reads it as ``None``).
  Empty ``spec.audiences`` means the API audience; otherwise the token's audiences must intersect
  them and ``status.audiences`` is the intersection.

Resources and verbs
-------------------
``RESOURCES`` (in ``resources.py``; add a ``ResourceType`` row to serve more): v1 namespaces,
nodes (cluster), pods, services, serviceaccounts, secrets, configmaps, endpoints;
discovery.k8s.io/v1 endpointslices; coordination.k8s.io/v1 leases; apps/v1 daemonsets,
deployments; security.nodemesh.io/v1 authorizationpolicies, peerauthentications; and
authentication.k8s.io/v1 tokenreviews (create only). Discovery: ``/api``, ``/api/v1``, ``/apis``,
``/apis/<g>``, ``/apis/<g>/<v>``, ``/version``.

* list — all namespaces or one; ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``,
  ``key``, ``!key``, ``>``, ``<``), ``fieldSelector`` (``metadata.name``, ``metadata.namespace``,
  and per resource e.g. pods ``spec.nodeName``, ``spec.serviceAccountName``, ``status.phase``,
  ``status.podIP``; ``=``/``==``/``!=``; others → 400 ``field label not supported``),
  ``limit`` + ``continue`` (a consistent snapshot at the first page's version; a token older than
  the kept history → HTTP **410** ``Expired``), ``resourceVersion`` (``""``/``"0"``: latest; N:
  not older than N, ``resourceVersionMatch=Exact``: exactly N; N in the future → 504). Items are
  sorted by namespace/name; built-in list items carry no ``kind``/``apiVersion`` (as on a real
  server), custom resources keep them.
* watch (``watch=true``) — chunked ``application/json``, one ``{"type", "object"}`` per line.
  No ``resourceVersion`` (or ``"0"``): ADDED for every current object, then changes. ``N``:
  every change after ``N`` replayed from history, then live. ``sendInitialEvents=true`` (with
  ``resourceVersionMatch=NotOlderThan``): initial ADDEDs, then a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"``. Selectors apply to events: an object that stops
  matching arrives as DELETED, one that starts matching as ADDED. ``allowWatchBookmarks=true``:
  a BOOKMARK (``{"kind", "apiVersion", "metadata": {"resourceVersion"}}``) every
  ``bookmark_interval`` seconds. ``timeoutSeconds`` ends the stream cleanly.
  **Expired**: a ``resourceVersion`` older than the kept history gets HTTP 200 and one
  ``{"type": "ERROR", "object": <Status code 410 reason Expired>}`` line, then the stream ends —
  as the real watch cache does. Through ``kubernetes.watch.Watch().stream(...)`` that surfaces as
  ``ApiException(status=410)`` raised from the generator (reason ``"Expired: too old resource
  version: ..."``): without ``timeout_seconds`` the client first retries the watch once from the
  same version, gets the ERROR again, then raises; with ``timeout_seconds`` it raises at once.
* get; create (POST, 201; 409 ``AlreadyExists``; 404 when the namespace does not exist; uid,
  creationTimestamp, resourceVersion assigned; ``generateName`` honoured); update (PUT;
  ``metadata.resourceVersion`` not current → 409 ``Conflict``; none → unconditional; a no-op write
  keeps the version and sends no event); patch (``merge-patch+json``; ``strategic-merge-patch+json``
  treated as a merge patch — lists are replaced, not merged by key; ``json-patch+json``; a patch
  that sets ``metadata.resourceVersion`` is a precondition); delete (pods answer with the object,
  others with a ``Status`` Success; DeleteOptions ``preconditions`` honoured; deleting a namespace
  deletes its contents at once — no Terminating phase); deletecollection.
* Objects: one global integer ``resourceVersion`` counter (strings on the wire);
  ``metadata.generation`` for apps/v1 and the CRDs (bumped when anything outside metadata/status
  changes); namespaces get the ``kubernetes.io/metadata.name`` label and ``status.phase: Active``.
* ``status`` is a subresource for namespaces, nodes, pods, services, daemonsets, deployments
  and the two CRDs: PUT/PATCH of the object keep the stored status; ``/status`` (GET, PUT, PATCH;
  RBAC resource ``pods/status``) changes only the status. Test hooks set both.
* ``/healthz``, ``/readyz``, ``/livez`` answer ``ok``. A bug in the fake answers 500 with a
  Status naming the exception (and logs the traceback).
* Not implemented (→ 400/415/404): dryRun, server-side apply, protobuf/CBOR/YAML bodies, other
  subresources (``/log``, ``/exec``, ``/scale``), the legacy ``/api/v1/watch/...`` paths.

Test hooks (synchronous, callable from any thread while the server runs)
--------------------------------------------------------------------------
* ``apply(obj) -> dict`` — create or replace (ADDED / MODIFIED; an identical object is a no-op);
  keeps a given ``metadata.uid`` and ``creationTimestamp`` (fixtures with fixed uids), ignores
  ``resourceVersion``, puts namespaced objects without a namespace in ``default`` (as kubectl
  does) and does not require the namespace to exist. Raises `FakeKubeApiError` for a kind the
  fake does not serve or an invalid object (bad name, non-string label values).
* ``load_yaml(text_or_path) -> list[dict]`` — multi-document YAML (``kind: List`` expanded); a
  ``Path``, or a ``str`` that names an existing file, is read; each document is ``apply``-ed.
* ``delete(ref, namespace, name) -> dict`` and ``get_object(ref, namespace, name) -> dict | None``
  — ``ref`` is a kind (``"Pod"``), ``"apiVersion/Kind"`` (``"security.nodemesh.io/v1/
  AuthorizationPolicy"``) or a plural (``"pods"``); ``namespace`` is ``""``/None for cluster-scoped.
* ``objects(ref) -> list[dict]``; ``resource_version -> int`` (current global version).
* ``compact() -> int`` — forget all history: watches from and list continues at older versions get
  410. ``max_history`` bounds history the same way.
* ``close_watches() -> int`` — end every open watch stream cleanly (an API server restart).
  ``open_watches -> int`` and ``await api.wait_for_watches(n, timeout=5)`` /
  ``api.wait_for_watches_sync(n, timeout=5)`` — wait until ``n`` watches are open.
* ``fail_next(method, path_prefix, status, count=1, *, retry_after=None, message=None)`` — the
  next ``count`` authenticated requests whose method (``"*"`` for any) and path prefix match get
  ``status`` with a Status body (``reason`` from the code: 429 ``TooManyRequests``, 500
  ``InternalError``, ...) and ``Retry-After`` if given. Note: under the ``kubernetes`` client,
  urllib3's default ``Retry`` re-sends GET/PUT/DELETE answered 413/429/503 *with*
  ``Retry-After`` up to 3 times (sleeping that long), so ``count <= 3`` of those is invisible
  to the caller; POST/PATCH, other codes, or no ``retry_after`` reach the caller at once.
* ``requests: list[RequestRecord]`` — ``(method, path, query: dict, token)`` of every request
  in order (unauthenticated ones too); ``clear_requests()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from .auth import API_AUDIENCE, TokenInfo, TokenRegistry
from .errors import ApiError, FakeKubeApiError
from .resources import RESOURCES, ResourceTable, ResourceType
from .server import FailRule, Handlers, RequestRecord
from .store import JsonObject, Store, Watcher
from .tls import ServerTls, generate

if TYPE_CHECKING:
    import kubernetes.client

__all__ = [
    "API_AUDIENCE",
    "RESOURCES",
    "ApiError",
    "FakeKubeApi",
    "FakeKubeApiError",
    "RequestRecord",
    "ResourceType",
    "TokenInfo",
]

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class FakeKubeApi:
    def __init__(
        self,
        *,
        bookmark_interval: float = 1.0,
        max_history: int = 1000,
        admin_token: str = "admin-token",
        default_namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        api_audiences: tuple[str, ...] = (API_AUDIENCE,),
        resources: tuple[ResourceType, ...] = RESOURCES,
    ) -> None:
        if bookmark_interval <= 0:
            raise ValueError(f"bookmark_interval must be positive, not {bookmark_interval}")
        self.bookmark_interval = bookmark_interval
        self.table = ResourceTable(resources)
        self.store = Store(max_history=max_history)
        self.tokens = TokenRegistry(api_audiences)
        self.admin_token = admin_token
        self.tokens.add(
            admin_token, username="system:admin", groups=("system:masters", "system:authenticated")
        )
        self.requests: list[RequestRecord] = []
        self._fail_rules: list[FailRule] = []
        self._fail_lock = threading.Lock()
        self._tls: ServerTls | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._watch_lock = threading.Lock()
        self._open: set[Watcher] = set()
        # every connection that sent a request (one per client connection: clients keep them
        # alive), aborted at stop; uvloop transports cannot be weakly referenced
        self._transports: set[asyncio.Transport] = set()
        self._watch_changed = threading.Condition(self._watch_lock)
        ns_rt = self.table.by_path("", "v1", "namespaces")
        for ns in default_namespaces:
            if ns_rt is None:
                raise FakeKubeApiError("default_namespaces given but namespaces are not served")
            self.store.create(ns_rt, {"metadata": {"name": ns}})

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise FakeKubeApiError("this FakeKubeApi is already running; start it once")
        self._tls = generate()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-kubeapi-")
        ssl_ctx = self._tls.server_context(Path(self._tmp.name))
        (Path(self._tmp.name) / "ca.crt").write_bytes(self._tls.ca_pem)
        runner = web.AppRunner(
            Handlers(self).app(), access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.store.close_watches()
        await runner.cleanup()
        # Connections the clients keep alive would otherwise wait for a TLS close_notify reply
        # after the loop is gone (and warn as unclosed): drop them, as a stopped server does.
        # A closing TLS transport still waits for the reply: abort those too.
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        await asyncio.sleep(0)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> FakeKubeApi:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[FakeKubeApi]:
        """Run the server on a private event loop in a daemon thread for the ``with`` body."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # handed to the starting thread, which re-raises
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="fake-kubeapi", daemon=True)
        thread.start()
        started.wait()
        try:
            if failure:
                raise FakeKubeApiError("the fake API server did not start") from failure[0]
            yield self
        finally:
            if not failure:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeKubeApi]:
        async with self:
            yield self

    # -- connection details ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._runner is None:
            raise FakeKubeApiError(
                "the fake API server is not running (use async with or running_in_thread())"
            )
        return f"https://127.0.0.1:{self._port}"

    @property
    def ca_pem(self) -> bytes:
        if self._tls is None:
            raise FakeKubeApiError("the fake API server has not been started yet")
        return self._tls.ca_pem

    @property
    def ca_file(self) -> Path:
        """The CA certificate as a file (valid while the server runs)."""
        if self._tmp is None:
            raise FakeKubeApiError("the fake API server is not running")
        return Path(self._tmp.name) / "ca.crt"

    def write_kubeconfig(
        self,
        path: str | os.PathLike[str],
        token: str | None = None,
        *,
        namespace: str | None = None,
    ) -> Path:
        context: dict[str, Any] = {"cluster": "fake", "user": "fake"}
        if namespace:
            context["namespace"] = namespace
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "fake", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "fake", "context": context}],
            "current-context": "fake",
            "preferences": {},
        }
        out = Path(path)
        out.write_text(yaml.safe_dump(doc))
        out.chmod(0o600)
        return out

    def client_configuration(self, token: str | None = None) -> kubernetes.client.Configuration:
        import kubernetes.client  # tests only: the fake itself does not need the client

        cfg = kubernetes.client.Configuration(host=self.url)
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"BearerToken": token or self.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    # -- tokens ---------------------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        *,
        username: str,
        uid: str = "",
        groups: Iterable[str] = ("system:authenticated",),
        extra: Mapping[str, Iterable[str]] | None = None,
        audiences: Iterable[str] | None = None,
        allow: Iterable[tuple[str, str]] | None = None,
    ) -> TokenInfo:
        return self.tokens.add(
            token,
            username=username,
            uid=uid,
            groups=groups,
            extra=extra,
            audiences=audiences,
            allow=allow,
        )

    def restrict(self, token: str, allow: Iterable[tuple[str, str]] | None) -> None:
        self.tokens.restrict(token, allow)

    def remove_token(self, token: str) -> None:
        self.tokens.remove(token)

    # -- objects --------------------------------------------------------------------------------

    def resolve(self, ref: str) -> ResourceType:
        """A kind, ``apiVersion/Kind`` or plural → its resource type."""
        api_version, _, kind = ref.rpartition("/")
        rt = self.table.by_kind(api_version, kind) if api_version else self.table.by_name(ref)
        if rt is None:
            served = ", ".join(f"{r.api_version}/{r.kind}" for r in self.table.rows)
            raise FakeKubeApiError(f"resource {ref!r} is not served by the fake (served: {served})")
        return rt

    def _resource_of(self, obj: Mapping[str, Any], where: str) -> ResourceType:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            raise FakeKubeApiError(f"{where}: the object needs string apiVersion and kind")
        rt = self.table.by_kind(api_version, kind)
        if rt is None or rt.virtual:
            served = ", ".join(
                f"{r.api_version}/{r.kind}" for r in self.table.rows if not r.virtual
            )
            raise FakeKubeApiError(
                f"{where}: {api_version}/{kind} is not served by the fake (served: {served}; "
                "add a ResourceType row to serve more)"
            )
        return rt

    def apply(self, obj: Mapping[str, Any]) -> JsonObject:
        rt = self._resource_of(obj, "apply")
        body = dict(obj)
        meta = body.get("metadata")
        if isinstance(meta, dict):
            meta = {k: v for k, v in meta.items() if k != "resourceVersion"}
            if rt.namespaced:
                meta.setdefault("namespace", "default")
            body["metadata"] = meta
        try:
            return self.store.apply(rt, body)
        except ApiError as exc:
            raise FakeKubeApiError(f"apply {rt.kind}: {exc.message}") from exc

    def load_yaml(self, text_or_path: str | os.PathLike[str]) -> list[JsonObject]:
        source = "<text>"
        if isinstance(text_or_path, os.PathLike) or (
            "\n" not in text_or_path and os.path.isfile(text_or_path)
        ):
            source = os.fspath(text_or_path)
            text = Path(text_or_path).read_text()
        else:
            text = text_or_path
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise FakeKubeApiError(f"load_yaml {source}: malformed YAML: {exc}") from exc
        objects: list[tuple[int, Any]] = []
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                objects.extend((i, item) for item in doc.get("items") or [])
            else:
                objects.append((i, doc))
        out = []
        for i, doc in objects:
            if not isinstance(doc, dict):
                raise FakeKubeApiError(
                    f"load_yaml {source}: document {i} is a {type(doc).__name__}, not an object"
                )
            self._resource_of(doc, f"load_yaml {source} document {i}")
            out.append(self.apply(doc))
        return out

    def get_object(self, ref: str, namespace: str | None, name: str) -> JsonObject | None:
        try:
            return self.store.get(self.resolve(ref), namespace or "", name)
        except ApiError:
            return None

    def delete(self, ref: str, namespace: str | None, name: str) -> JsonObject:
        rt = self.resolve(ref)
        try:
            gone = self.store.delete(rt, namespace or "", name)
        except ApiError as exc:
            raise FakeKubeApiError(f"delete {rt.kind} {namespace}/{name}: {exc.message}") from exc
        if rt.plural == "namespaces":
            self._delete_namespace_contents(name)
        return gone

    def objects(self, ref: str) -> list[JsonObject]:
        return list(self.store.objects(self.resolve(ref)))

    def _delete_namespace_contents(self, namespace: str) -> None:
        for rt in self.table.rows:
            if not rt.namespaced or rt.virtual:
                continue
            for obj in self.store.objects(rt):
                if obj["metadata"].get("namespace") == namespace:
                    with contextlib.suppress(ApiError):  # already gone: fine
                        self.store.delete(rt, namespace, obj["metadata"]["name"])

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def compact(self) -> int:
        return self.store.compact()

    # -- watches --------------------------------------------------------------------------------

    def close_watches(self) -> int:
        return self.store.close_watches()

    def _watch_opened(self, w: Watcher) -> None:
        with self._watch_changed:
            self._open.add(w)
            self._watch_changed.notify_all()

    def _watch_closed(self, w: Watcher) -> None:
        with self._watch_changed:
            self._open.discard(w)
            self._watch_changed.notify_all()

    @property
    def open_watches(self) -> int:
        with self._watch_lock:
            return len(self._open)

    def wait_for_watches_sync(self, n: int, timeout: float = 5.0) -> None:
        with self._watch_changed:
            if not self._watch_changed.wait_for(lambda: len(self._open) >= n, timeout):
                raise TimeoutError(
                    f"expected {n} open watch(es) within {timeout}s, have {len(self._open)}"
                )

    # same signature as the sync variant, on purpose
    async def wait_for_watches(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open_watches < n:
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"expected {n} open watch(es) within {timeout}s, have {self.open_watches}"
                )
            await asyncio.sleep(0.01)

    # -- error injection and the request log ----------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        status: int,
        count: int = 1,
        *,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        if not 400 <= status <= 599 or count < 1:
            raise ValueError(f"fail_next: status {status} must be 4xx/5xx and count {count} >= 1")
        with self._fail_lock:
            self._fail_rules.append(
                FailRule(
                    method.upper(),
                    path_prefix,
                    status,
                    count,
                    retry_after,
                    message or f"injected failure {status} for {method} {path_prefix}",
                )
            )

    def _check_injected(self, method: str, path: str) -> None:
        with self._fail_lock:
            for rule in self._fail_rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    headers = {}
                    details: dict[str, Any] | None = None
                    if rule.retry_after is not None:
                        headers["Retry-After"] = str(rule.retry_after)
                        details = {"retryAfterSeconds": rule.retry_after}
                    self._fail_rules = [r for r in self._fail_rules if r.remaining > 0]
                    raise ApiError(rule.status, rule.message, details=details, headers=headers)

    def clear_requests(self) -> None:
        self.requests.clear()
