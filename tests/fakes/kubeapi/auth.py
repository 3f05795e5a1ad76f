"""Bearer tokens, the authorization hook and TokenReview — one registry backs all three.

Semantics follow the real server:
* A request is authenticated when its ``Authorization: Bearer`` token is registered and valid
  for the API server's own audience (`API_AUDIENCE` unless the fake was given others). A token
  registered only for other audiences (a projected service-account token for, say, the nodemesh
  controller) cannot call the API, exactly as on a cluster — but TokenReview accepts it.
* TokenReview: an empty ``spec.audiences`` means the API server's audiences; otherwise the token's
  audiences must intersect the requested ones, and ``status.audiences`` is the intersection. A
  failed review has no ``authenticated`` key (``omitempty`` on the real server), ``user: {}`` and
  an ``error``.
* Authorization: a token registered with ``allow`` may only perform those (verb, resource) pairs;
  ``resource`` is the plural (``pods``) or ``plural.group`` (``leases.coordination.k8s.io``) and
  either side may be ``"*"``; a subresource is spelled ``pods/status``. Without ``allow``
  everything is allowed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .resources import ResourceType

API_AUDIENCE: Final = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class TokenInfo:
    token: str
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: Mapping[str, tuple[str, ...]]
    #: None: valid for the API server's audiences only
    audiences: tuple[str, ...] | None
    #: None: allowed everything; else the (verb, resource) pairs this token may use
    allow: frozenset[tuple[str, str]] | None

    def user_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info

    def permits(self, verb: str, rt: ResourceType, subresource: str | None = None) -> bool:
        if self.allow is None:
            return True
        sub = "" if subresource is None else "/" + subresource
        names = (rt.plural + sub, rt.qualified + sub, "*")
        return any(v in (verb, "*") and r in names for v, r in self.allow)


class TokenRegistry:
    def __init__(self, api_audiences: tuple[str, ...] = (API_AUDIENCE,)) -> None:
        self.api_audiences = api_audiences
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenInfo] = {}

    def add(
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
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"token {token!r}: a bearer token must be non-empty, without spaces")
        info = TokenInfo(
            token=token,
            username=username,
            uid=uid,
            groups=tuple(groups),
            extra=MappingProxyType({k: tuple(v) for k, v in (extra or {}).items()}),
            audiences=None if audiences is None else tuple(audiences),
            allow=None if allow is None else frozenset(allow),
        )
        with self._lock:
            self._tokens[token] = info
        return info

    def remove(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def restrict(self, token: str, allow: Iterable[tuple[str, str]] | None) -> None:
        with self._lock:
            info = self._tokens.get(token)
            if info is None:
                raise KeyError(f"token {token!r} is not registered (add_token it first)")
            self._tokens[token] = TokenInfo(
                info.token,
                info.username,
                info.uid,
                info.groups,
                info.extra,
                info.audiences,
                None if allow is None else frozenset(allow),
            )

    def lookup(self, token: str) -> TokenInfo | None:
        with self._lock:
            return self._tokens.get(token)

    def audiences_of(self, info: TokenInfo) -> tuple[str, ...]:
        return self.api_audiences if info.audiences is None else info.audiences

    def authenticate(self, header: str | None) -> TokenInfo | None:
        """The caller of an API request, or None (→ 401)."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        info = self.lookup(token.strip())
        if info is None or not set(self.audiences_of(info)) & set(self.api_audiences):
            return None
        return info

    def review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The ``status`` of a TokenReview of ``token`` for ``audiences``."""
        wanted = audiences or list(self.api_audiences)
        info = self.lookup(token)
        if info is None:
            return {
                "user": {},
                "error": "[invalid bearer token, token lookup failed: the token is not "
                "registered with the fake API server]",
            }
        have = self.audiences_of(info)
        common = [a for a in wanted if a in have]
        if not common:
            return {
                "user": {},
                "error": f"[invalid bearer token, token audiences {_quoted(have)} is invalid "
                f"for the target audiences {_quoted(wanted)}]",
            }
        return {"authenticated": True, "user": info.user_info(), "audiences": common}


def _quoted(items: Iterable[str]) -> str:
    return "[" + " ".join(f'"{i}"' for i in items) + "]"
