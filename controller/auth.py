"""Node authentication by bootstrap bearer token (local mode).

``--node-tokens-dir`` holds one file per node: file name = node name, content = token. The
directory is re-read when its signature (names, mtimes, sizes, inodes) changes, checked at most
every ``recheck_seconds`` on use. Tokens compare in constant time, and every token is compared so
the time taken does not tell which node matched.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from controller.errors import AuthError
from meshapi.ids import NodeName

log = logging.getLogger(__name__)

#: tokens shorter than this are refused: a guessable credential is worse than none
MIN_TOKEN_BYTES = 16


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

    def authenticate(self, authorization: str | None) -> NodeName:
        """The node named by an ``Authorization: Bearer <token>`` header, or AuthError."""
        if not authorization:
            raise AuthError("missing Authorization: Bearer <node token> header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization header must be 'Bearer <node token>'")
        presented = token.strip().encode("utf-8", "replace")
        self._refresh()
        found: NodeName | None = None
        for node, expected in self._tokens.items():
            if hmac.compare_digest(presented, expected) and found is None:
                found = node
        if found is None:
            raise AuthError(
                "unknown node token (check the node's --token-file against "
                "the controller's --node-tokens-dir)"
            )
        return found
