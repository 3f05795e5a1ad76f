"""The controller's only contact with the ``kubernetes`` client: configuration loading and raw JSON
requests through :class:`kubernetes.client.ApiClient`.

Why raw requests (``ApiClient.param_serialize`` + ``call_api``, JSON in and out) rather than the
generated ``CoreV1Api`` methods and ``kubernetes.watch.Watch.stream``:

* ``Watch.stream`` (client 37) retries once by itself after a 410 unless ``timeout_seconds`` is
  given, then raises ``ApiException(410)``; it tracks the resume point in its own object and, with
  ``deserialize=True``, turns every event into a model object. The controller wants the decoded
  dicts (they are the edge: :mod:`controller.translate` validates them into its own types), its
  own resume bookkeeping (:class:`meshapi.kubewatch.Reflector`), and a handle on the response to
  end a watch at once on shutdown. Reading the chunked response line by line gives all three.
* The generated methods validate request bodies into pydantic models (``V1Lease``...), which
  re-serialise fields such as MicroTime on the way out; a dict body goes out as written.

Everything blocks: call it from worker threads. Every failure is a :class:`KubeError` with the
HTTP status (None when the server could not be reached) and the API's own message.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import kubernetes
import urllib3

from controller.errors import KubeError, StartupError

#: (connect, read) seconds for ordinary requests
REQUEST_TIMEOUT: Final = (5.0, 15.0)
#: the longest line a watch stream may send (one object); larger means something is wrong
MAX_LINE_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource kind the controller lists and watches cluster-wide."""

    kind: str
    api_version: str
    plural: str

    @property
    def path(self) -> str:
        if "/" in self.api_version:
            return f"/apis/{self.api_version}/{self.plural}"
        return f"/api/{self.api_version}/{self.plural}"

    def namespaced_path(self, namespace: str, name: str = "") -> str:
        base = self.path.rsplit("/", 1)[0]
        tail = f"/{name}" if name else ""
        return f"{base}/namespaces/{namespace}/{self.plural}{tail}"


PODS: Final = Resource("Pod", "v1", "pods")
SECRETS: Final = Resource("Secret", "v1", "secrets")
CONFIG_MAPS: Final = Resource("ConfigMap", "v1", "configmaps")
LEASES: Final = Resource("Lease", "coordination.k8s.io/v1", "leases")
TOKEN_REVIEWS_PATH: Final = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105


#: connections kept per API server: one per watched kind, plus TokenReviews, Lease, ConfigMap
POOL_SIZE: Final = 32


def load_api_client(kubeconfig: Path | None) -> Any:
    """An ``ApiClient``: from ``kubeconfig`` if given, else the in-cluster service account, else
    ``$KUBECONFIG`` / ``~/.kube/config``."""
    config: Any = kubernetes.config  # untyped package
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or "in-cluster service account, $KUBECONFIG or ~/.kube/config"
        raise StartupError(
            f"cannot load the Kubernetes client configuration from {where}: {exc}; pass "
            "--kubeconfig, or run in a pod with a service account"
        ) from exc
    # every watch holds a connection: the default pool (5 per CPU) may be smaller than that
    configuration.connection_pool_maxsize = max(
        POOL_SIZE, configuration.connection_pool_maxsize or 0
    )
    return kubernetes.client.ApiClient(configuration)


def _status_message(status: int, data: bytes) -> str:
    """The message of a Kubernetes ``Status`` body, or the start of whatever came instead."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        reason = body.get("reason")
        return f"{status} {reason}: {body['message']}" if reason else f"{status}: {body['message']}"
    text = data[:200].decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {text}" if text else "")


class WatchStream:
    """One open watch response: iterate decoded events. :meth:`interrupt` (from any thread) ends
    it at once; :meth:`close` (the reading thread, when done) gives the connection back."""

    def __init__(self, response: Any, what: str) -> None:
        self._resp = response
        self._what = what
        self._interrupted = False
        self._complete = False

    def __iter__(self) -> Iterator[object]:
        buffer = bytearray()
        try:
            for chunk in self._resp.stream(amt=None, decode_content=True):
                buffer.extend(chunk)
                while True:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        break
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    if line.strip():
                        yield self._decode(line)
                if len(buffer) > MAX_LINE_BYTES:
                    raise KubeError(
                        f"{self._what}: a watch event exceeds {MAX_LINE_BYTES} bytes", None
                    )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._interrupted:
                return
            raise KubeError(f"{self._what}: the watch stream broke: {exc}", None) from exc
        if buffer.strip() and not self._interrupted:
            yield self._decode(bytes(buffer))
        self._complete = True

    def _decode(self, line: bytes) -> object:
        try:
            event: object = json.loads(line)
        except ValueError as exc:
            raise KubeError(f"{self._what}: a watch event is not JSON: {exc}", None) from exc
        return event

    def interrupt(self) -> None:
        """End the stream now, from any thread (shuts the socket down under the reader)."""
        self._interrupted = True
        try:
            self._resp.shutdown()
        except (AttributeError, OSError, ValueError, RuntimeError):
            # older urllib3, or nothing left to shut down (already complete or released)
            sock = getattr(getattr(self._resp, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Done reading: a complete stream's connection is reused, any other is dropped."""
        with contextlib.suppress(OSError, urllib3.exceptions.HTTPError):
            if not self._complete:
                self._resp.close()
            self._resp.release_conn()


class KubeClient:
    """Raw JSON requests to the API server (blocking)."""

    def __init__(self, api_client: Any) -> None:
        self._api = api_client

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    def close(self) -> None:
        self._api.close()

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
        timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=timeout)
        except kubernetes.client.ApiException as exc:
            # the REST layer raises this for transport failures too (status 0)
            raise KubeError(f"{what}: {exc.status} {exc.reason}", exc.status or None) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"{what}: cannot reach the API server {self.host}: {exc}") from exc
        status = int(response.status)
        if not 200 <= status <= 299:
            try:
                data = response.read()
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
            raise KubeError(f"{what}: {_status_message(status, data)}", status)
        return response

    def request(
        self,
        method: str,
        path: str,
        what: str,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
    ) -> object:
        """One request; the decoded JSON answer. ``what`` names the request in errors."""
        response = self._send(method, path, what, query, body)
        try:
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"{what}: reading the answer failed: {exc}") from exc
        try:
            decoded: object = json.loads(data)
        except ValueError as exc:
            raise KubeError(f"{what}: the answer is not JSON: {exc}") from exc
        return decoded

    def get(self, path: str, what: str) -> object | None:
        """GET one object; None if it does not exist."""
        try:
            return self.request("GET", path, what)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list_page(self, resource: Resource, limit: int, continue_token: str = "") -> object:
        query = [("limit", str(limit))]
        if continue_token:
            query.append(("continue", continue_token))
        return self.request("GET", resource.path, f"list {resource.plural}", query)

    def watch(self, resource: Resource, resource_version: str, timeout_seconds: int) -> WatchStream:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        what = f"watch {resource.plural}"
        response = self._send(
            "GET",
            resource.path,
            what,
            query,
            timeout=(REQUEST_TIMEOUT[0], timeout_seconds + REQUEST_TIMEOUT[1]),
        )
        return WatchStream(response.response, what)
