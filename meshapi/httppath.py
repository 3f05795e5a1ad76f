"""What L7 policy matches: the request path and host as the app will see them (issue 10).

L7 AuthorizationPolicy (``paths``/``notPaths``, ``hosts``/``notHosts``) must decide on the same
path the app routes on; otherwise ``/admin/../admin/x`` or ``//admin`` walks past a DENY on
``/admin/*``. The mesh-wide setting ``pathNormalization`` (controller flag
``--path-normalization``, carried in every discovery snapshot) chooses how the path is
normalized before it is matched, with Istio's names and meaning
(``meshConfig.pathNormalization``):

``NONE``
    the path as sent. Only safe when the app does no normalization of its own.
``BASE``
    RFC 3986 section 6 normalization as Envoy does it: percent-encoded unreserved characters
    (``ALPHA DIGIT - . _ ~``) decoded, every other percent-encoding upper-cased, a backslash
    turned into ``/`` (as Istio does), dot segments (``/./``, ``/../``) resolved.
``MERGE_SLASHES``
    ``BASE``, then runs of ``/`` merged into one.
``DECODE_AND_MERGE_SLASHES``
    ``%2F`` and ``%5C`` (any case) decoded first, then ``MERGE_SLASHES``.

The default is ``MERGE_SLASHES`` (:data:`DEFAULT_PATH_NORMALIZATION`), one step stricter than
Istio's ``BASE``: most servers and routers treat ``//admin`` as ``/admin`` (nginx
``merge_slashes``, many frameworks), so under ``BASE`` a DENY on ``/admin/*`` is bypassed by
``//admin/x``; merging costs nothing for apps that do not distinguish ``//``.

Encoded slashes (the stated rule): in ``BASE`` and ``MERGE_SLASHES`` a path that contains
``%2F`` or ``%5C`` (any case) is **rejected** (:func:`normalize_path` returns None; the ztunnel
answers 400, reason ``http_path``). Left encoded, ``/admin%2Fx`` would not match ``/admin/*``
while an app that decodes before routing serves ``/admin/x``; rejecting fails closed, as Envoy's
``REJECT_REQUEST`` action does. ``DECODE_AND_MERGE_SLASHES`` decodes them instead; ``NONE``
passes them (and everything else) unchanged.

Other rules, the same in every mode:

* The query string is not part of the matched path (Istio matches ``paths`` against the URL
  path, without ``?query``): :func:`split_query`.
* A malformed percent-encoding (``%`` not followed by two hex digits) is rejected in every mode
  but ``NONE`` (the ztunnel's parser rejects it before that, in every mode).
* ``*`` (``OPTIONS *``) and the empty path (``CONNECT``) are matched as they are.
* Methods are case-sensitive tokens (RFC 9110 section 9.1): ``get`` is not ``GET`` and does not
  match a ``GET`` rule. Because an app may upper-case methods, the ztunnel rejects a request
  whose method is a standard method in another case (``get``, ``Delete``): :func:`ambiguous_method`.
* Hosts (:func:`normalize_host`): matched case-insensitively, with one trailing dot of the name
  removed (``example.com.`` is ``example.com``); a ``hosts`` entry matches the host with or
  without its port (``meshapi.policy``).

Invariant: every mode but ``NONE`` is idempotent (``normalize(normalize(p)) == normalize(p)``)
and its result has no dot segment, so normalizing again (as the app might) changes nothing.
Standard library only, no I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


class PathNormalization(StrEnum):
    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


DEFAULT_PATH_NORMALIZATION: Final = PathNormalization.MERGE_SLASHES

#: the methods of RFC 9110 and RFC 5789 (PATCH); a request naming one in another case is refused
STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT: Final = re.compile(r"%(..)?", re.DOTALL)
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_MERGE: Final = re.compile(r"/{2,}")


def parse_mode(value: str) -> PathNormalization:
    """The mode named ``value`` (exact, upper case); ValueError naming the choices otherwise."""
    try:
        return PathNormalization(value)
    except ValueError:
        choices = ", ".join(m.value for m in PathNormalization)
        raise ValueError(
            f"{value!r} is not a path normalization (expected one of {choices})"
        ) from None


def split_query(target_path: str) -> tuple[str, str]:
    """``/a/b?x=1`` -> (``/a/b``, ``x=1``); the query is '' when there is none."""
    path, _, query = target_path.partition("?")
    return path, query


def normalize_path(path: str, mode: PathNormalization) -> str | None:
    """The path L7 policy matches (no query: see :func:`split_query`), or None when the request
    must be rejected under ``mode`` (bad percent-encoding; an encoded slash that ``mode`` would
    leave encoded)."""
    if mode is PathNormalization.NONE or path in ("", "*"):
        return path
    decoded = _decode(path, decode_slashes=mode is PathNormalization.DECODE_AND_MERGE_SLASHES)
    if decoded is None:
        return None
    out = _remove_dot_segments(decoded.replace("\\", "/"))
    if mode is not PathNormalization.BASE:
        out = _MERGE.sub("/", out)
    return out


def _decode(path: str, *, decode_slashes: bool) -> str | None:
    bad = False

    def one(m: re.Match[str]) -> str:
        nonlocal bad
        hexdigits = m.group(1)
        if hexdigits is None or not set(hexdigits) <= _HEX:
            bad = True
            return m.group(0)
        char = chr(int(hexdigits, 16))
        if char in _UNRESERVED:
            return char
        if char in "/\\":
            if not decode_slashes:
                bad = True
                return m.group(0)
            return char
        return "%" + hexdigits.upper()

    out = _PERCENT.sub(one, path)
    return None if bad else out


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path (one that starts with ``/``; a relative one
    is treated as if it did, then keeps its first segment)."""
    absolute = path.startswith("/")
    segments = path.split("/")
    if absolute:
        segments = segments[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    joined = "/".join(out)
    return "/" + joined if absolute else joined


def normalize_host(host: str) -> str:
    """The host that ``hosts`` match: lower case, one trailing dot of the name removed
    (``Example.COM.:8080`` -> ``example.com:8080``). An IPv6 literal keeps its brackets."""
    h = host.lower()
    name, sep, port = h.rpartition(":")
    if sep and port.isascii() and port.isdigit() and name:
        return name.removesuffix(".") + ":" + port
    return h.removesuffix(".")


def ambiguous_method(method: str) -> bool:
    """A standard method written in another case (``get``): an app that upper-cases methods
    would serve it as the standard one while policy, case-sensitive, would not match it."""
    upper = method.upper()
    return upper != method and upper in STANDARD_METHODS
