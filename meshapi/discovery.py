"""The discovery stream between the controller and each node (DESIGN.md "Control protocol").

Transport (owned by the controller and the node components, not by this module):
``GET /v1/discovery?epoch=E&version=V`` on the controller API (TLS, ``Authorization: Bearer
<node token>``) answers ``application/x-ndjson``: one JSON message per line.

Messages:

* ``{"type": "snapshot", "epoch": E, "version": V, "workloads": [...], "services": [...],
  "authorizationPolicies": [...], "peerAuthentications": [...], "rootNamespace": NS,
  "pathNormalization": MODE}`` replaces everything the node knew (the policy lists may be
  absent: empty; ``rootNamespace`` absent: ``nodemesh-system``; ``pathNormalization``, the
  mesh-wide path normalization of L7 policy (:mod:`meshapi.httppath`), absent: its default).
* ``{"type": "delta", "epoch": E, "version": V, "upsert": {"workloads": [...], "services":
  [...], "authorizationPolicies": [...], "peerAuthentications": [...]}, "remove": {"workloads":
  [uid...], "services": ["ns/name"...], "authorizationPolicies": ["ns/name"...],
  "peerAuthentications": ["ns/name"...]}}`` moves the node from version ``V-1`` to ``V``.
  Policies are ``{"namespace", "name", "dryRun", "spec"}`` with the spec as written
  (:mod:`meshapi.policy`).
* ``{"type": "heartbeat", "epoch": E, "version": V}`` every few seconds so a silent peer is
  detected; it changes nothing.

``epoch`` is random per controller start. A node that reconnects with the epoch and version it
last applied gets the deltas after that version, if the controller still holds them; otherwise
(other epoch, version too old) it gets a fresh snapshot. :class:`DiscoveryState` is the sans-I/O
client side of that contract.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from meshapi import wire
from meshapi.constants import DEFAULT_ROOT_NAMESPACE
from meshapi.errors import IdentityError, WireError
from meshapi.httppath import DEFAULT_PATH_NORMALIZATION, PathNormalization, parse_mode
from meshapi.ids import ServiceKey, is_dns_label
from meshapi.model import Service, Workload
from meshapi.policy import AuthorizationPolicy, PeerAuthentication

T = TypeVar("T")

MAX_LINE_BYTES = 16 * 1024 * 1024
HEARTBEAT_SECONDS = 5.0
#: a node treats a stream with no line for this long as dead and reconnects
STREAM_IDLE_TIMEOUT_SECONDS = 3 * HEARTBEAT_SECONDS


@dataclass(frozen=True, slots=True)
class Snapshot:
    epoch: str
    version: int
    workloads: tuple[Workload, ...]
    services: tuple[Service, ...]
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    #: policies in this namespace apply mesh-wide (fixed per controller process, so per epoch)
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    #: how L7 policy normalizes request paths, mesh-wide (fixed per controller process)
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION
    type: Literal["snapshot"] = "snapshot"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "epoch": self.epoch,
            "version": self.version,
            "workloads": [w.to_wire() for w in self.workloads],
            "services": [s.to_wire() for s in self.services],
            "authorizationPolicies": [p.to_wire() for p in self.authorization_policies],
            "peerAuthentications": [p.to_wire() for p in self.peer_authentications],
            "rootNamespace": self.root_namespace,
            "pathNormalization": self.path_normalization.value,
        }


@dataclass(frozen=True, slots=True)
class Delta:
    epoch: str
    version: int
    upsert_workloads: tuple[Workload, ...] = ()
    upsert_services: tuple[Service, ...] = ()
    remove_workloads: tuple[str, ...] = ()
    remove_services: tuple[str, ...] = ()
    upsert_authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    upsert_peer_authentications: tuple[PeerAuthentication, ...] = ()
    remove_authorization_policies: tuple[str, ...] = ()
    remove_peer_authentications: tuple[str, ...] = ()
    type: Literal["delta"] = "delta"

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "delta",
            "epoch": self.epoch,
            "version": self.version,
            "upsert": {
                "workloads": [w.to_wire() for w in self.upsert_workloads],
                "services": [s.to_wire() for s in self.upsert_services],
                "authorizationPolicies": [p.to_wire() for p in self.upsert_authorization_policies],
                "peerAuthentications": [p.to_wire() for p in self.upsert_peer_authentications],
            },
            "remove": {
                "workloads": list(self.remove_workloads),
                "services": list(self.remove_services),
                "authorizationPolicies": list(self.remove_authorization_policies),
                "peerAuthentications": list(self.remove_peer_authentications),
            },
        }


@dataclass(frozen=True, slots=True)
class Heartbeat:
    epoch: str
    version: int
    type: Literal["heartbeat"] = "heartbeat"

    def to_wire(self) -> dict[str, Any]:
        return {"type": "heartbeat", "epoch": self.epoch, "version": self.version}


Message = Snapshot | Delta | Heartbeat


def decode(value: object) -> Message:
    """Parse one decoded JSON line of the stream."""
    obj = wire.as_mapping(value, "")
    kind = wire.req_str(obj, "type", "")
    epoch = wire.req_str(obj, "epoch", "")
    version = wire.req_int(obj, "version", "", 0, 2**63 - 1)
    if kind == "heartbeat":
        return Heartbeat(epoch, version)
    if kind == "snapshot":
        return Snapshot(
            epoch,
            version,
            workloads=_workloads(obj.get("workloads", []), "workloads"),
            services=_services(obj.get("services", []), "services"),
            authorization_policies=_authz(
                obj.get("authorizationPolicies", []), "authorizationPolicies"
            ),
            peer_authentications=_peer_authn(
                obj.get("peerAuthentications", []), "peerAuthentications"
            ),
            root_namespace=_root_namespace(obj),
            path_normalization=_path_normalization(obj),
        )
    if kind == "delta":
        upsert = wire.as_mapping(obj.get("upsert", {}), "upsert")
        remove = wire.as_mapping(obj.get("remove", {}), "remove")
        return Delta(
            epoch,
            version,
            upsert_workloads=_workloads(upsert.get("workloads", []), "upsert.workloads"),
            upsert_services=_services(upsert.get("services", []), "upsert.services"),
            remove_workloads=_strings(remove.get("workloads", []), "remove.workloads"),
            remove_services=_service_keys(remove.get("services", []), "remove.services"),
            upsert_authorization_policies=_authz(
                upsert.get("authorizationPolicies", []), "upsert.authorizationPolicies"
            ),
            upsert_peer_authentications=_peer_authn(
                upsert.get("peerAuthentications", []), "upsert.peerAuthentications"
            ),
            remove_authorization_policies=_strings(
                remove.get("authorizationPolicies", []), "remove.authorizationPolicies"
            ),
            remove_peer_authentications=_strings(
                remove.get("peerAuthentications", []), "remove.peerAuthentications"
            ),
        )
    raise WireError("type", f"unknown message type {kind!r}")


class LineSplitter:
    """The stream's framing, sans I/O: bytes in, complete non-blank lines out. A line longer
    than ``limit`` bytes raises :class:`WireError` (the caller drops the stream)."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()
        #: bytes of ``_buf`` already searched for a newline: a long line arriving in many
        #: chunks is scanned once, not once per chunk
        self._scanned = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self._limit:
                    raise WireError("", f"discovery line exceeds {self._limit} bytes")
                return
            if nl > self._limit:
                raise WireError("", f"discovery line of {nl} bytes exceeds {self._limit}")
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scanned = 0
            if line.strip():
                yield line


def _workloads(value: object, path: str) -> tuple[Workload, ...]:
    items = wire.as_list(value, path)
    return tuple(Workload.from_wire(w, wire.join(path, i)) for i, w in enumerate(items))


def _services(value: object, path: str) -> tuple[Service, ...]:
    items = wire.as_list(value, path)
    return tuple(Service.from_wire(s, wire.join(path, i)) for i, s in enumerate(items))


def _authz(value: object, path: str) -> tuple[AuthorizationPolicy, ...]:
    items = wire.as_list(value, path)
    return tuple(AuthorizationPolicy.from_wire(p, wire.join(path, i)) for i, p in enumerate(items))


def _peer_authn(value: object, path: str) -> tuple[PeerAuthentication, ...]:
    items = wire.as_list(value, path)
    return tuple(PeerAuthentication.from_wire(p, wire.join(path, i)) for i, p in enumerate(items))


def _root_namespace(obj: Mapping[str, Any]) -> str:
    value = wire.opt_str(obj, "rootNamespace", "", DEFAULT_ROOT_NAMESPACE)
    if not is_dns_label(value):
        raise WireError("rootNamespace", f"{value!r} is not a namespace name")
    return value


def _path_normalization(obj: Mapping[str, Any]) -> PathNormalization:
    value = wire.opt_str(obj, "pathNormalization", "", DEFAULT_PATH_NORMALIZATION.value)
    try:
        return parse_mode(value)
    except ValueError as exc:
        raise WireError("pathNormalization", str(exc)) from None


def _service_keys(value: object, path: str) -> tuple[str, ...]:
    keys = _strings(value, path)
    for i, key in enumerate(keys):
        try:
            ServiceKey.parse(key)
        except IdentityError as exc:
            raise WireError(wire.join(path, i), str(exc)) from None
    return keys


def _strings(value: object, path: str) -> tuple[str, ...]:
    items = wire.as_list(value, path)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise WireError(wire.join(path, i), f"expected a string, got {wire.type_name(item)}")
    return tuple(items)


@dataclass(frozen=True, slots=True)
class Change:
    """What one applied message changed, so a node component reacts only to that."""

    workloads: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    full: bool = False
    #: keys (``namespace/name``) of changed AuthorizationPolicies and PeerAuthentications
    policies: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.workloads or self.services or self.full or self.policies)


@dataclass
class DiscoveryState:
    """Client side of the discovery stream: the node's current view and where to resume."""

    epoch: str = ""
    version: int = 0
    synced: bool = False
    workloads: dict[str, Workload] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    authorization_policies: dict[str, AuthorizationPolicy] = field(default_factory=dict)
    peer_authentications: dict[str, PeerAuthentication] = field(default_factory=dict)
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION

    def resume_params(self) -> Mapping[str, str]:
        if not self.synced:
            return {}
        return {"epoch": self.epoch, "version": str(self.version)}

    def apply_line(self, line: bytes) -> tuple[Message, Change]:
        """Decode one ndjson line and apply it. Raises :class:`WireError` for a malformed line,
        and for a delta that does not follow our version, after forgetting the resume point so
        the next connection asks for a fresh snapshot."""
        message = decode(wire.loads(line))
        try:
            return message, self.apply(message)
        except WireError:
            self.synced = False
            raise

    def apply(self, message: Message) -> Change:
        """Apply one message. Raises WireError for a delta that does not follow our version;
        the caller then reconnects without resume parameters and gets a snapshot."""
        if isinstance(message, Heartbeat):
            return Change()
        if isinstance(message, Snapshot):
            before_w, before_s = self.workloads, self.services
            before_a, before_p = self.authorization_policies, self.peer_authentications
            self.workloads = {w.key: w for w in message.workloads}
            self.services = {s.key: s for s in message.services}
            self.authorization_policies = {p.key: p for p in message.authorization_policies}
            self.peer_authentications = {p.key: p for p in message.peer_authentications}
            self.root_namespace = message.root_namespace
            self.path_normalization = message.path_normalization
            self.epoch, self.version, self.synced = message.epoch, message.version, True
            return Change(
                workloads=_diff(before_w, self.workloads),
                services=_diff(before_s, self.services),
                full=True,
                policies=_diff(before_a, self.authorization_policies)
                | _diff(before_p, self.peer_authentications),
            )
        if not self.synced or message.epoch != self.epoch or message.version != self.version + 1:
            raise WireError(
                "version",
                f"delta {message.epoch}/{message.version} does not follow "
                f"{self.epoch or '-'}/{self.version}; a fresh snapshot is needed",
            )
        # everything that can fail is checked before the first change: never half-applied
        for i, key in enumerate(message.remove_services):
            try:
                ServiceKey.parse(key)
            except IdentityError as exc:
                raise WireError(f"remove.services[{i}]", str(exc)) from None
        changed_w: set[str] = set()
        changed_s: set[str] = set()
        for uid in message.remove_workloads:
            if self.workloads.pop(uid, None) is not None:
                changed_w.add(uid)
        for key in message.remove_services:
            if self.services.pop(key, None) is not None:
                changed_s.add(key)
        for w in message.upsert_workloads:
            self.workloads[w.key] = w
            changed_w.add(w.key)
        for s in message.upsert_services:
            self.services[s.key] = s
            changed_s.add(s.key)
        changed_p: set[str] = set()
        for key in message.remove_authorization_policies:
            if self.authorization_policies.pop(key, None) is not None:
                changed_p.add(key)
        for key in message.remove_peer_authentications:
            if self.peer_authentications.pop(key, None) is not None:
                changed_p.add(key)
        for a in message.upsert_authorization_policies:
            self.authorization_policies[a.key] = a
            changed_p.add(a.key)
        for p in message.upsert_peer_authentications:
            self.peer_authentications[p.key] = p
            changed_p.add(p.key)
        self.version = message.version
        return Change(
            workloads=frozenset(changed_w),
            services=frozenset(changed_s),
            policies=frozenset(changed_p),
        )


def _diff(before: Mapping[str, object], after: Mapping[str, object]) -> frozenset[str]:
    keys = set(before) | set(after)
    return frozenset(k for k in keys if before.get(k) != after.get(k))


def diff_to_delta(
    epoch: str,
    version: int,
    before_w: Mapping[str, Workload],
    after_w: Mapping[str, Workload],
    before_s: Mapping[str, Service],
    after_s: Mapping[str, Service],
    before_a: Mapping[str, AuthorizationPolicy] | None = None,
    after_a: Mapping[str, AuthorizationPolicy] | None = None,
    before_p: Mapping[str, PeerAuthentication] | None = None,
    after_p: Mapping[str, PeerAuthentication] | None = None,
) -> Delta | None:
    """The delta that turns the ``before_*`` maps into the ``after_*`` ones (workloads,
    services, authorization policies, peer authentications), or None if all are equal."""
    up_w, rm_w = _changes(before_w, after_w)
    up_s, rm_s = _changes(before_s, after_s)
    up_a, rm_a = _changes(before_a or {}, after_a or {})
    up_p, rm_p = _changes(before_p or {}, after_p or {})
    if not (up_w or up_s or rm_w or rm_s or up_a or rm_a or up_p or rm_p):
        return None
    return Delta(epoch, version, up_w, up_s, rm_w, rm_s, up_a, up_p, rm_a, rm_p)


def _changes(
    before: Mapping[str, T], after: Mapping[str, T]
) -> tuple[tuple[T, ...], tuple[str, ...]]:
    upserts = tuple(v for k, v in sorted(after.items()) if before.get(k) != v)
    return upserts, tuple(sorted(set(before) - set(after)))
