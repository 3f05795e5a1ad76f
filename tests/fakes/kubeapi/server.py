"""The HTTP side of the fake: aiohttp handlers that speak the API server's REST protocol.

Requests go through one handler: record → authenticate (401) → injected failures → route →
authorize (403) → verb. Routing understands ``/api/v1/...``, ``/apis/<group>/<version>/...``,
namespaced and cluster-scoped collections and objects, and discovery. Any failure is an
`ApiError` turned into a ``Status`` body with the same code.

Watch streams are chunked JSON lines; see `FakeKubeApi` for the protocol details.

Invariant: a handler never blocks the loop — every store call is a short critical section.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiohttp import web

from . import errors
from .auth import TokenInfo
from .errors import ApiError
from .patch import PatchError, json_patch, merge_patch
from .resources import ResourceType
from .selectors import Selector, SelectorError, parse_field_selector, parse_label_selector
from .store import JsonObject, UpdatePart, Watcher, translate

if TYPE_CHECKING:
    from . import FakeKubeApi

log = logging.getLogger(__name__)

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_PATCH: Final = "application/strategic-merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
_TRUE: Final = ("true", "1")


class RequestRecord(NamedTuple):
    """One request as the fake saw it (``requests`` log)."""

    method: str
    path: str
    query: dict[str, str]
    token: str | None


@dataclass
class FailRule:
    method: str
    path_prefix: str
    status: int
    remaining: int
    retry_after: int | None
    message: str

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and path.startswith(self.path_prefix)
        )


@dataclass(frozen=True)
class Route:
    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type=JSON, headers=headers
    )


def _bool(query: dict[str, str], key: str) -> bool:
    return query.get(key, "").lower() in _TRUE


def _int(query: dict[str, str], key: str) -> int | None:
    raw = query.get(key)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise errors.bad_request(f"query parameter {key}={raw!r} is not an integer") from exc
    if value < 0:
        raise errors.bad_request(f"query parameter {key}={raw!r} must not be negative")
    return value


def _not_found_path() -> ApiError:
    return ApiError(404, "the server could not find the requested resource")


class Handlers:
    """The aiohttp application's request handling for one `FakeKubeApi`."""

    def __init__(self, fake: FakeKubeApi) -> None:
        self.fake = fake
        self.store = fake.store
        self.table = fake.table

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            self.fake._transports.add(request.transport)
        query = dict(request.query)
        header = request.headers.get("Authorization")
        token = header.partition(" ")[2].strip() or None if header else None
        self.fake.requests.append(RequestRecord(request.method, request.path, query, token))
        try:
            caller = self.fake.tokens.authenticate(header)
            if caller is None:
                raise ApiError(401, "Unauthorized")
            self.fake._check_injected(request.method, request.path)
            return await self._dispatch(request, query, caller)
        except ApiError as exc:
            return _json(exc.status(), exc.code, exc.headers)
        except Exception as exc:
            # a bug in the fake: answer like an apiserver panic (a 500 Status) so the client
            # under test sees a server error, and log the traceback for whoever reads the test
            log.exception("fake API server: %s %s failed", request.method, request.path)
            err = ApiError(
                500,
                f"fake API server bug while handling {request.method} "
                f"{request.path}: {exc!r} (see the test log)",
            )
            return _json(err.status(), 500)

    # -- routing --------------------------------------------------------------------------------

    async def _dispatch(
        self, request: web.Request, query: dict[str, str], caller: TokenInfo
    ) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if request.method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                return _json(discovery)
        route = self._route(parts)
        method = request.method
        if route.subresource is not None and not (
            route.subresource == "status"
            and route.resource.status_subresource
            and method in ("GET", "PUT", "PATCH")
        ):
            raise _not_found_path()
        if method == "GET":
            if route.name is not None:
                verb = "get"
            else:
                verb = "watch" if _bool(query, "watch") else "list"
        elif method == "POST" and route.name is None:
            verb = "create"
        elif method == "PUT" and route.name is not None:
            verb = "update"
        elif method == "PATCH" and route.name is not None:
            verb = "patch"
        elif method == "DELETE":
            verb = "delete" if route.name is not None else "deletecollection"
        else:
            raise ApiError(
                405,
                f"the server does not allow this method on the requested resource "
                f"({method} {request.path})",
            )
        rt = route.resource
        if verb not in rt.verbs and not (verb == "deletecollection" and "delete" in rt.verbs):
            raise ApiError(
                405,
                f"the server does not allow this method on the requested "
                f"resource ({verb} {rt.qualified})",
            )
        if not caller.permits(verb, rt, route.subresource):
            where = (
                f' in the namespace "{route.namespace}"'
                if route.namespace is not None
                else " at the cluster scope"
            )
            named = f' "{route.name}"' if route.name else ""
            raise ApiError(
                403,
                f"{rt.qualified}{named} "
                f'is forbidden: User "{caller.username}" cannot {verb} resource "{rt.plural}"'
                f"{'' if route.subresource is None else '/' + route.subresource} "
                f'in API group "{rt.group}"{where}',
                details={"name": route.name or "", "group": rt.group, "kind": rt.plural},
            )
        if query.get("dryRun"):
            raise errors.bad_request("the fake API server does not implement dryRun")
        if rt.virtual:
            return await self._token_review(request)
        if verb == "get":
            assert route.name is not None
            return _json(self.store.get(rt, route.namespace or "", route.name))
        if verb == "list":
            return _json(self._list(route, query))
        if verb == "watch":
            return await self._watch(request, route, query)
        if verb == "create":
            return _json(await self._create(request, route), 201)
        if verb == "update":
            return _json(await self._update(request, route))
        if verb == "patch":
            return _json(await self._patch(request, route))
        if verb == "delete":
            return _json(await self._delete(request, route))
        return _json(self._delete_collection(route, query))

    def _route(self, parts: list[str]) -> Route:
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_found_path()
        namespace: str | None = None
        # /namespaces/<ns>/<plural>... is a namespaced resource, unless <plural> is not one:
        # then it is a subresource of the namespace itself (/namespaces/<ns>/status)
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and (len(rest) > 3 or self.table.by_path(group, version, rest[2]) is not None)
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _not_found_path()
        rt = self.table.by_path(group, version, rest[0])
        if rt is None:
            raise _not_found_path()
        if namespace is not None and not rt.namespaced:
            raise _not_found_path()
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if rt.namespaced and namespace is None and name is not None:
            raise _not_found_path()
        return Route(rt, namespace, name, sub)

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        groups = self.table.group_versions()
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "37",
                "gitVersion": "v1.37.0-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": groups.get("", []),
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.fake.url.split("//")[1]}
                ],
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g, vs) for g, vs in groups.items() if g],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups and parts[1]:
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                **self._group(parts[1], groups[parts[1]]),
            }
        gv: tuple[str, str] | None = None
        if len(parts) == 2 and parts[0] == "api":
            gv = ("", parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            gv = (parts[1], parts[2])
        if gv is None:
            return None
        rows = self.table.in_group_version(*gv)
        if not rows:
            raise _not_found_path()
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": rows[0].group_version,
            "resources": [
                {
                    "name": r.plural,
                    "singularName": r.singular_name,
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": [v for v in r.verbs]
                    + (["deletecollection"] if "delete" in r.verbs else []),
                    **({"shortNames": list(r.short_names)} if r.short_names else {}),
                }
                for r in rows
            ],
        }

    @staticmethod
    def _group(name: str, versions: list[str]) -> dict[str, Any]:
        vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": vs, "preferredVersion": vs[0]}

    # -- verbs ----------------------------------------------------------------------------------

    def _selector(self, rt: ResourceType, query: dict[str, str]) -> Selector:
        try:
            return Selector(
                parse_label_selector(query.get("labelSelector", "")),
                parse_field_selector(
                    query.get("fieldSelector", ""),
                    ("metadata.name", "metadata.namespace", *rt.extra_fields),
                ),
            )
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc

    def _list(self, route: Route, query: dict[str, str]) -> dict[str, Any]:
        rt = route.resource
        result = self.store.list_objects(
            rt,
            route.namespace,
            self._selector(rt, query),
            limit=_int(query, "limit"),
            continue_token=query.get("continue") or None,
            resource_version=query.get("resourceVersion", ""),
            resource_version_match=query.get("resourceVersionMatch", ""),
        )
        items = result.items
        if rt.builtin:
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        meta: dict[str, Any] = {"resourceVersion": str(result.resource_version)}
        if result.continue_token:
            meta["continue"] = result.continue_token
        if result.remaining is not None:
            meta["remainingItemCount"] = result.remaining
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            raise errors.bad_request(f"{request.method} {request.path}: the request has no body")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise errors.bad_request(
                f"{request.method} {request.path}: the body is not valid JSON ({exc}); the fake "
                "accepts JSON only (no YAML, protobuf or CBOR)"
            ) from exc

    async def _object_body(self, request: web.Request, route: Route) -> JsonObject:
        body = await self._body(request)
        rt = route.resource
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"{request.method} {request.path}: the body must be a JSON object (a {rt.kind})"
            )
        if (
            body.get("apiVersion", rt.api_version) != rt.api_version
            or body.get("kind", rt.kind) != rt.kind
        ):
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) and kind "
                f"({body.get('kind')}) do not match the expected {rt.api_version} {rt.kind}"
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request(f"{rt.kind}: metadata must be an object")
        if rt.namespaced:
            ns = meta.get("namespace")
            if ns not in (None, "", route.namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    f"the request ({ns!r} in the body, {route.namespace!r} in the URL)"
                )
            meta["namespace"] = route.namespace
        if route.name is not None and meta.get("name") not in (None, route.name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({route.name})"
            )
        if route.name is not None:
            meta["name"] = route.name
        return body

    def _require_namespace(self, route: Route) -> None:
        if route.resource.namespaced and route.namespace is not None:
            ns_rt = self.table.by_path("", "v1", "namespaces")
            if ns_rt is not None and not self.store.exists(ns_rt, "", route.namespace):
                raise errors.not_found(ns_rt, route.namespace)

    async def _create(self, request: web.Request, route: Route) -> JsonObject:
        body = await self._object_body(request, route)
        self._require_namespace(route)
        return self.store.create(route.resource, body)

    async def _update(self, request: web.Request, route: Route) -> JsonObject:
        body = await self._object_body(request, route)
        return self.store.update(route.resource, body, part=_part(route))

    async def _patch(self, request: web.Request, route: Route) -> JsonObject:
        rt = route.resource
        assert route.name is not None
        ctype = request.content_type
        body = await self._body(request)
        if ctype in (MERGE_PATCH, STRATEGIC_PATCH):
            if not isinstance(body, dict):
                raise errors.bad_request(f"a {ctype} body must be a JSON object")

            def change(current: JsonObject) -> Any:
                return merge_patch(current, body)
        elif ctype == JSON_PATCH:

            def change(current: JsonObject) -> Any:
                return json_patch(current, body)
        else:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH} (the fake does not "
                f"implement {ctype or 'a missing Content-Type'})",
            )
        with self.store.locked():
            current = self.store.get(rt, route.namespace or "", route.name)
            try:
                patched = change(current)
            except PatchError as exc:
                raise ApiError(422, f'{rt.kind} "{route.name}" patch failed: {exc}') from exc
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise ApiError(422, f'{rt.kind} "{route.name}": the patch removed the metadata')
            meta = patched["metadata"]
            if meta.get("name") != route.name or (
                rt.namespaced and meta.get("namespace") != route.namespace
            ):
                raise errors.invalid(
                    rt.kind, route.name, "metadata.name", "Invalid value: field is immutable"
                )
            if meta.get("uid") != current["metadata"]["uid"]:
                raise errors.invalid(
                    rt.kind, route.name, "metadata.uid", "Invalid value: field is immutable"
                )
            return self.store.update(rt, patched, part=_part(route))

    async def _delete(self, request: web.Request, route: Route) -> dict[str, Any]:
        rt = route.resource
        assert route.name is not None
        pre_rv = pre_uid = None
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    opts = json.loads(raw)
                except ValueError as exc:
                    raise errors.bad_request(f"DeleteOptions is not valid JSON ({exc})") from exc
                pre = opts.get("preconditions") if isinstance(opts, dict) else None
                if isinstance(pre, dict):
                    pre_rv, pre_uid = pre.get("resourceVersion"), pre.get("uid")
        gone = self.store.delete(
            rt, route.namespace or "", route.name, precondition_rv=pre_rv, precondition_uid=pre_uid
        )
        if rt.plural == "namespaces":
            self.fake._delete_namespace_contents(route.name)
        if rt.delete_returns_object:
            return gone
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": route.name,
                "group": rt.group,
                "kind": rt.plural,
                "uid": gone["metadata"]["uid"],
            },
        }

    def _delete_collection(self, route: Route, query: dict[str, str]) -> dict[str, Any]:
        rt = route.resource
        selector = self._selector(rt, query)
        removed = []
        for obj in self.store.list_objects(rt, route.namespace, selector).items:
            meta = obj["metadata"]
            try:
                removed.append(self.store.delete(rt, meta.get("namespace", ""), meta["name"]))
            except ApiError as exc:
                if exc.code != 404:  # deleted concurrently: fine, it is gone
                    raise
        items = removed
        if rt.builtin:
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": items,
        }

    async def _token_review(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("token"), str):
            raise errors.bad_request(
                "TokenReview: spec.token must be a string (the body is "
                '{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", '
                '"spec": {"token": ..., "audiences": [...]}})'
            )
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise errors.bad_request("TokenReview: spec.audiences must be a list of strings")
        status = self.fake.tokens.review(spec["token"], audiences)
        out_spec: dict[str, Any] = {"token": spec["token"]}
        if audiences:
            out_spec["audiences"] = audiences
        return _json(
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": out_spec,
                "status": status,
            },
            201,
        )

    # -- watch ----------------------------------------------------------------------------------

    async def _watch(
        self, request: web.Request, route: Route, query: dict[str, str]
    ) -> web.StreamResponse:
        rt = route.resource
        selector = self._selector(rt, query)
        timeout = _int(query, "timeoutSeconds")
        bookmarks = _bool(query, "allowWatchBookmarks")
        initial_events = _bool(query, "sendInitialEvents")
        raw_rv = query.get("resourceVersion", "")
        if initial_events and query.get("resourceVersionMatch") != "NotOlderThan":
            raise ApiError(
                422,
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set "
                "to NotOlderThan",
                reason="Invalid",
            )
        since: int | None
        if raw_rv in ("", "0") or initial_events:
            since = None
        else:
            try:
                since = int(raw_rv)
            except ValueError as exc:
                raise errors.bad_request(
                    f"resourceVersion {raw_rv!r} is not a valid resource version"
                ) from exc
        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        resp.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        try:
            watcher, first, current = self.store.watch(rt, route.namespace, selector, since, loop)
        except ApiError as exc:
            # the watch cache answers 200 and one ERROR event carrying the Status
            await resp.prepare(request)
            await _send(resp, "ERROR", exc.status())
            await resp.write_eof()
            return resp
        self.fake._watch_opened(watcher)
        try:
            await resp.prepare(request)
            for etype, obj in first:
                await _send(resp, etype, obj)
            if initial_events:
                await _send(resp, "BOOKMARK", _bookmark(rt, current, initial_end=True))
            await self._stream(request, resp, watcher, timeout, bookmarks)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away: nothing to tell it
        finally:
            self.store.unwatch(watcher)
            self.fake._watch_closed(watcher)
        return resp

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        watcher: Watcher,
        seconds: int | None,
        bookmarks: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        interval = self.fake.bookmark_interval
        next_bookmark = loop.time() + interval
        while True:
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            wait_until = min(
                t
                for t in (deadline, next_bookmark if bookmarks else None, now + 0.5)
                if t is not None
            )
            try:
                await asyncio.wait_for(watcher.wake.wait(), max(0.0, wait_until - now))
            except TimeoutError:
                pass
            events, current, closed = self.store.take(watcher)
            for ev in events:
                seen = translate(ev, watcher.selector)
                if seen is not None:
                    await _send(resp, seen[0], seen[1])
            if closed:
                return
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if bookmarks and loop.time() >= next_bookmark:
                await _send(resp, "BOOKMARK", _bookmark(watcher.resource, current))
                next_bookmark = loop.time() + interval


def _part(route: Route) -> UpdatePart:
    return "status" if route.subresource == "status" else "main"


def _bookmark(rt: ResourceType, rv: int, *, initial_end: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


async def _send(resp: web.StreamResponse, etype: str, obj: dict[str, Any]) -> None:
    await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
