"""Node authentication: who is the node behind an ``Authorization: Bearer`` header.

Two implementations of :class:`NodeAuthenticator` (``async authenticate(header) -> NodeName``,
raising :class:`AuthError` → 401, or :class:`AuthUnavailable` → 503, retry later):

* :class:`NodeTokens` (local mode): ``--node-tokens-dir`` holds one file per node: file name =
  node name, content = token. The directory is re-read when its signature (names, mtimes, sizes,
  inodes) changes, checked at most every ``recheck_seconds`` on use. Tokens compare in constant
  time, and every token is compared so the time taken does not tell which node matched.
* :class:`TokenReviewAuthenticator` (Kubernetes): the node DaemonSet's pod presents its projected
  service-account token (audience ``--token-audience``). The TokenReview API says whose it is;
  a bound token names its pod (``user.extra``: ``authentication.kubernetes.io/pod-name`` and
  ``pod-uid``); that pod must belong to the node service account, have that uid, and be
  scheduled: its ``spec.nodeName`` is the node. The I/O (TokenReview, reading the pod) is behind
  the :class:`TokenReviewer` protocol; :func:`reviewed_pod` and :func:`pod_node` decide purely.

Invariants of the TokenReview path: a token is never logged or kept; the cache holds SHA-256
digests of tokens that passed, for at most ``cache_ttl`` seconds and ``cache_size`` entries;
failures are not cached; an API failure is :class:`AuthUnavailable`, never a 401.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypedDict

from controller.errors import AuthError, AuthUnavailable, KubeError
from controller.metrics import Metrics
from meshapi.ids import NodeName, is_dns_label, is_dns_subdomain

log = logging.getLogger(__name__)

#: tokens shorter than this are refused: a guessable credential is worse than none
MIN_TOKEN_BYTES = 16
#: bound on what a node may send as its token (a projected service-account token is ~1 KiB)
MAX_TOKEN_BYTES: Final = 16384
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA: Final = "authentication.kubernetes.io/pod-uid"


class NodeAuthenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> NodeName:
        """The node behind the header; AuthError (refused) or AuthUnavailable (retry)."""
        ...


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization: Bearer <node token> header", "missing")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("Authorization header must be 'Bearer <node token>'", "malformed")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError(f"bearer token longer than {MAX_TOKEN_BYTES} bytes", "malformed")
    return token


class NodeTokens:
    def __init__(self, directory: Path, recheck_seconds: float = 0.25) -> None:
        self._dir = directory
        self._recheck = recheck_seconds
        self._checked_at = -1e18
        self._signature: frozenset[tuple[str, int, int, int]] | None = None
        self._tokens: dict[NodeName, bytes] = {}

    @property
    def nodes(self) -> frozenset[NodeName]:
        self._refresh()
        return frozenset(self._tokens)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._recheck:
            return
        self._checked_at = now
        try:
            entries = [
                (e.name, e.stat())
                for e in os.scandir(self._dir)
                if not e.name.startswith(".") and e.is_file()
            ]
        except OSError as exc:
            if self._tokens or self._signature is None:
                log.warning("event=node_tokens_unreadable dir=%s error=%s", self._dir, exc)
            self._tokens, self._signature = {}, frozenset()
            return
        sig = frozenset((n, s.st_mtime_ns, s.st_size, s.st_ino) for n, s in entries)
        if sig == self._signature:
            return
        self._signature = sig
        tokens: dict[NodeName, bytes] = {}
        for name, _ in entries:
            try:
                token = (self._dir / name).read_bytes().strip()
            except OSError as exc:
                log.warning("event=node_token_unreadable node=%s error=%s", name, exc)
                continue
            if len(token) < MIN_TOKEN_BYTES:
                log.warning(
                    "event=node_token_too_short node=%s min_bytes=%d", name, MIN_TOKEN_BYTES
                )
                continue
            tokens[NodeName(name)] = token
        self._tokens = tokens
        log.info("event=node_tokens_loaded dir=%s nodes=%d", self._dir, len(tokens))

    async def authenticate(self, authorization: str | None) -> NodeName:
        return self.check(authorization)

    def check(self, authorization: str | None) -> NodeName:
        """The node named by an ``Authorization: Bearer <token>`` header, or AuthError."""
        presented = bearer_token(authorization).encode("utf-8", "replace")
        self._refresh()
        found: NodeName | None = None
        for node, expected in self._tokens.items():
            if hmac.compare_digest(presented, expected) and found is None:
                found = node
        if found is None:
            raise AuthError(
                "unknown node token (check the node's --token-file against "
                "the controller's --node-tokens-dir)",
                "unknown",
            )
        return found


# ---- TokenReview -----------------------------------------------------------------------------


class UserInfoRaw(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class TokenReviewStatusRaw(TypedDict, total=False):
    authenticated: bool
    user: UserInfoRaw
    audiences: list[str]
    error: str


@dataclass(frozen=True, slots=True)
class ServiceAccountRef:
    """``namespace:name`` of a service account (``--node-service-account``)."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, value: str) -> ServiceAccountRef:
        namespace, sep, name = value.partition(":")
        if not sep or not is_dns_label(namespace) or not is_dns_subdomain(name):
            raise ValueError(
                f"{value!r} is not NAMESPACE:NAME of a service account (e.g. "
                "nodemesh-system:nodemesh-node)"
            )
        return cls(namespace, name)

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}:{self.name}"


@dataclass(frozen=True, slots=True)
class ReviewedPod:
    """The pod a bound service-account token was issued to."""

    namespace: str
    name: str
    uid: str


def _one_extra(extra: Mapping[str, object], key: str) -> str:
    values = extra.get(key)
    if (
        not isinstance(values, list)
        or len(values) != 1
        or not isinstance(values[0], str)
        or not values[0]
    ):
        raise AuthError(
            f"the token is not bound to a pod (TokenReview user.extra lacks {key}); the node "
            "must present a projected service-account token of its DaemonSet pod",
            "not_pod_bound",
        )
    return values[0]


def reviewed_pod(status: object, audience: str, node_sa: ServiceAccountRef) -> ReviewedPod:
    """Decide on a TokenReview ``status``: the pod the token belongs to, or AuthError."""
    if not isinstance(status, Mapping):
        raise AuthUnavailable("TokenReview answered without a status object; retry later")
    if status.get("authenticated") is not True:
        error = status.get("error")
        detail = f": {error}" if isinstance(error, str) and error else ""
        reason = "wrong_audience" if "audience" in detail else "unauthenticated"
        raise AuthError(f"the token was not accepted by the Kubernetes API{detail}", reason)
    audiences = status.get("audiences")
    if isinstance(audiences, list) and audiences and audience not in audiences:
        raise AuthError(
            f"the token is for audience(s) {audiences}, not {audience!r}; project the node's "
            f"token with audience {audience!r}",
            "wrong_audience",
        )
    user = status.get("user")
    if not isinstance(user, Mapping):
        raise AuthError("TokenReview status has no user", "unauthenticated")
    username = user.get("username")
    if username != node_sa.username:
        raise AuthError(
            f"the token belongs to {username!r}, not the node service account "
            f"{node_sa.username!r} (check --node-service-account and the DaemonSet's "
            "serviceAccountName)",
            "wrong_service_account",
        )
    extra = user.get("extra")
    extra = {} if extra is None else extra
    if not isinstance(extra, Mapping):
        raise AuthError("TokenReview user.extra is not an object", "not_pod_bound")
    return ReviewedPod(
        node_sa.namespace, _one_extra(extra, POD_NAME_EXTRA), _one_extra(extra, POD_UID_EXTRA)
    )


def pod_node(pod: object | None, who: ReviewedPod, node_sa: ServiceAccountRef) -> NodeName:
    """The node of the pod a token was bound to (the pod as read from the API, None if it does
    not exist), or AuthError."""
    name = f"{who.namespace}/{who.name}"
    if pod is None:
        raise AuthError(f"the token's pod {name} does not exist (any more)", "unknown_pod")
    if not isinstance(pod, Mapping):
        raise AuthUnavailable(f"reading pod {name} gave no object; retry later")
    meta = pod.get("metadata")
    spec = pod.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise AuthUnavailable(f"pod {name} as read has no metadata/spec; retry later")
    if meta.get("uid") != who.uid:
        raise AuthError(
            f"pod {name} has uid {meta.get('uid')!r}, the token was issued to uid {who.uid!r} "
            "(a deleted pod's token)",
            "uid_mismatch",
        )
    sa = spec.get("serviceAccountName") or "default"
    if sa != node_sa.name:
        raise AuthError(
            f"pod {name} runs as service account {sa!r}, not {node_sa.name!r}",
            "wrong_service_account",
        )
    node = spec.get("nodeName")
    if not isinstance(node, str) or not node:
        raise AuthError(f"pod {name} is not scheduled on a node yet", "unscheduled")
    return NodeName(node)


class TokenReviewer(Protocol):
    """The Kubernetes calls behind :class:`TokenReviewAuthenticator` (blocking: they run in a
    worker thread). Both raise :class:`KubeError` when the API cannot answer."""

    def review(self, token: str, audience: str) -> object:
        """POST a TokenReview; returns its ``status``."""
        ...

    def get_pod(self, namespace: str, name: str) -> object | None:
        """The pod as JSON, or None if it does not exist."""
        ...


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class ReviewCache:
    """Bounded LRU of token digests that passed, each valid for ``ttl`` seconds."""

    def __init__(
        self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: collections.OrderedDict[bytes, tuple[float, NodeName]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> NodeName | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry[1]

    def put(self, digest: bytes, node: NodeName) -> None:
        self._entries[digest] = (self._clock() + self._ttl, node)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class TokenReviewAuthenticator:
    def __init__(
        self,
        reviewer: TokenReviewer,
        audience: str,
        node_service_account: ServiceAccountRef,
        metrics: Metrics,
        *,
        cache_ttl: float = 10.0,
        cache_size: int = 1024,
        max_in_flight: int = 32,
        timeout: float = 10.0,
    ) -> None:
        self._reviewer = reviewer
        self._audience = audience
        self._node_sa = node_service_account
        self._metrics = metrics
        self._cache = ReviewCache(cache_ttl, cache_size)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._timeout = timeout
        #: one review per token at a time: a node's requests that arrive together (its
        #: discovery stream and CSRs after a controller restart) wait for the same answer
        self._reviews: dict[bytes, asyncio.Task[NodeName]] = {}

    @property
    def cache(self) -> ReviewCache:
        return self._cache

    async def authenticate(self, authorization: str | None) -> NodeName:
        token = bearer_token(authorization)
        digest = token_digest(token)
        cached = self._cache.get(digest)
        if cached is not None:
            self._metrics.token_reviews.labels("cached").inc()
            return cached
        task = self._reviews.get(digest)
        if task is not None:
            self._metrics.token_reviews.labels("shared").inc()
        else:
            # a task of its own: a caller that goes away does not cancel the others' review
            task = asyncio.create_task(self._review_and_cache(token, digest))
            self._reviews[digest] = task
            task.add_done_callback(lambda t: self._review_done(digest, t))
        return await asyncio.shield(task)

    async def _review_and_cache(self, token: str, digest: bytes) -> NodeName:
        try:
            node = await self._review(token)
        except AuthError as exc:
            self._metrics.token_reviews.labels(exc.reason).inc()
            raise
        except AuthUnavailable:
            self._metrics.token_reviews.labels("error").inc()
            raise
        self._metrics.token_reviews.labels("ok").inc()
        self._cache.put(digest, node)
        return node

    def _review_done(self, digest: bytes, task: asyncio.Task[NodeName]) -> None:
        if self._reviews.get(digest) is task:
            del self._reviews[digest]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def _review(self, token: str) -> NodeName:
        try:
            async with asyncio.timeout(self._timeout), self._in_flight:
                status = await asyncio.to_thread(self._reviewer.review, token, self._audience)
                who = reviewed_pod(status, self._audience, self._node_sa)
                pod = await asyncio.to_thread(self._reviewer.get_pod, who.namespace, who.name)
        except TimeoutError:
            raise AuthUnavailable(
                f"the Kubernetes API did not answer the token review within {self._timeout:g}s; "
                "retry later"
            ) from None
        except KubeError as exc:
            raise AuthUnavailable(
                f"cannot check the node token with the Kubernetes API: {exc}; retry later "
                "(check the controller's RBAC for tokenreviews create and pods get)"
            ) from exc
        return pod_node(pod, who, self._node_sa)
