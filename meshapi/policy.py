"""Authorization and peer authentication: the model, its wire form, and the pure evaluation that
both the ztunnel and ``meshctl policy explain`` run (DESIGN.md "L7", issue 4).

The ``spec`` of ``AuthorizationPolicy`` and ``PeerAuthentication`` (``security.nodemesh.io/v1``)
has the fields and meaning of Istio's ``security.istio.io/v1`` kinds. :meth:`from_spec` validates
a spec (unknown fields rejected, CIDRs, actions, principals checked) and raises
:class:`~meshapi.errors.WireError` with the field path (``spec.rules[0].from[1].source...``).

Evaluation (:func:`evaluate`), Istio semantics:

* a policy applies to a workload when it is in the workload's namespace or in the root namespace
  (mesh-wide) and its ``selector.matchLabels`` (if any) match the workload's labels;
* any matching DENY denies; otherwise, if any ALLOW applies, one must match; otherwise allow.
  AUDIT matches are reported, never enforced. A policy annotated ``nodemesh.io/dry-run: "true"``
  is evaluated into :attr:`Decision.dry_run` only;
* a policy with no rules matches nothing (an ALLOW with no rules therefore allows nothing); a rule
  ``{}`` matches everything; within a rule ``from``, ``to`` and ``when`` are ANDed, the items of
  ``from``/``to`` ORed, the values of a field ORed, fields of one source/operation ANDed;
* strings match exactly, by ``prefix*``, ``*suffix`` or ``*``;
* fail closed on ports that are not HTTP: an ALLOW rule that needs L7 attributes (methods, paths,
  hosts, request headers) never matches, a DENY rule with L7 attributes is matched on its L4 part
  only (so it denies at L4). Both add a warning to the decision;
* on an HTTP port before any request was read (``request is None``: the connection stage), a rule
  with L7 attributes cannot be decided yet: it does not deny the connection, and an ALLOW rule
  whose L4 part matches lets the connection through; each request is then evaluated in full.

Peer authentication (:func:`resolve_mtls`): port-level > selector > namespace > mesh-wide (root
namespace); ``UNSET`` inherits; the default is ``STRICT``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from meshapi import wire
from meshapi.constants import DEFAULT_ROOT_NAMESPACE
from meshapi.errors import IdentityError, WireError
from meshapi.ids import PodUid, SpiffeId, is_dns_label
from meshapi.model import Service, Workload

DRY_RUN_ANNOTATION: Final = "nodemesh.io/dry-run"
API_VERSION: Final = "security.nodemesh.io/v1"
KIND_AUTHZ: Final = "AuthorizationPolicy"
KIND_PEER_AUTHN: Final = "PeerAuthentication"
DENIED_BODY: Final = b"RBAC: access denied"

Network = ipaddress.IPv4Network


class Action(enum.StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


class MtlsMode(enum.StrEnum):
    UNSET = "UNSET"
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"


# ---- model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] | None = None
    not_principals: tuple[str, ...] | None = None
    namespaces: tuple[str, ...] | None = None
    not_namespaces: tuple[str, ...] | None = None
    ip_blocks: tuple[Network, ...] | None = None
    not_ip_blocks: tuple[Network, ...] | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    ports: tuple[int, ...] | None = None
    not_ports: tuple[int, ...] | None = None
    methods: tuple[str, ...] | None = None
    not_methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    not_paths: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None
    not_hosts: tuple[str, ...] | None = None

    @property
    def is_l7(self) -> bool:
        return any(
            v is not None
            for v in (
                self.methods,
                self.not_methods,
                self.paths,
                self.not_paths,
                self.hosts,
                self.not_hosts,
            )
        )


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    values: tuple[str, ...] | None = None
    not_values: tuple[str, ...] | None = None

    @property
    def header(self) -> str | None:
        """The header name of a ``request.headers[NAME]`` key (lower case), else None."""
        if self.key.startswith("request.headers[") and self.key.endswith("]"):
            return self.key[len("request.headers[") : -1].lower()
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    when: tuple[Condition, ...] = ()

    @property
    def is_l7(self) -> bool:
        return any(o.is_l7 for o in self.operations) or any(c.header is not None for c in self.when)


def _labels_match(selector: tuple[tuple[str, str], ...], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...] = ()
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False
    #: the validated spec as written (wire form; the model above is derived from it)
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def applies_to(self, namespace: str, labels: Mapping[str, str], root_namespace: str) -> bool:
        if self.namespace not in (namespace, root_namespace):
            return False
        return _labels_match(self.selector, labels)

    @classmethod
    def from_spec(
        cls, namespace: str, name: str, spec: object, *, dry_run: bool = False, path: str = "spec"
    ) -> AuthorizationPolicy:
        obj = _fields(
            spec, path, ("selector", "action", "rules", "provider", "targetRef", "targetRefs")
        )
        for unsupported in ("provider", "targetRef", "targetRefs"):
            if unsupported in obj:
                raise WireError(
                    wire.join(path, unsupported),
                    "not supported by nodemesh (use selector and ALLOW/DENY/AUDIT)",
                )
        action_raw = wire.opt_str(obj, "action", path, "ALLOW")
        try:
            action = Action(action_raw)
        except ValueError:
            raise WireError(
                wire.join(path, "action"),
                f"unknown action {action_raw!r} (expected ALLOW, DENY or AUDIT)",
            ) from None
        rules_path = wire.join(path, "rules")
        rules_raw = obj.get("rules")
        rules = (
            ()
            if rules_raw is None
            else tuple(
                _rule(r, wire.join(rules_path, i))
                for i, r in enumerate(wire.as_list(rules_raw, rules_path))
            )
        )
        return cls(
            namespace=namespace,
            name=name,
            selector=_selector(obj.get("selector"), wire.join(path, "selector")),
            action=action,
            rules=rules,
            dry_run=dry_run,
            spec=_plain(obj),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "dryRun": self.dry_run,
            "spec": _plain(self.spec),
        }

    @classmethod
    def from_wire(cls, value: object, path: str = "authorizationPolicy") -> AuthorizationPolicy:
        obj = wire.as_mapping(value, path)
        namespace, name = _meta(obj, path)
        return cls.from_spec(
            namespace,
            name,
            obj.get("spec", {}),
            dry_run=wire.opt_bool(obj, "dryRun", path, False),
            path=wire.join(path, "spec"),
        )


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...] | None = None
    mode: MtlsMode = MtlsMode.UNSET
    port_level: tuple[tuple[int, MtlsMode], ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_spec(
        cls, namespace: str, name: str, spec: object, *, path: str = "spec"
    ) -> PeerAuthentication:
        obj = _fields(spec, path, ("selector", "mtls", "portLevelMtls"))
        selector = (
            None
            if obj.get("selector") is None
            else _selector(obj.get("selector"), wire.join(path, "selector"))
        )
        mode = _mtls(obj.get("mtls"), wire.join(path, "mtls"))
        plpath = wire.join(path, "portLevelMtls")
        ports: list[tuple[int, MtlsMode]] = []
        raw_ports = obj.get("portLevelMtls")
        if raw_ports is not None:
            if not selector:
                raise WireError(
                    plpath, "portLevelMtls needs a selector with matchLabels (as in Istio)"
                )
            for key, value in wire.as_mapping(raw_ports, plpath).items():
                kpath = wire.join(plpath, key)
                ports.append((_port(key, kpath), _mtls(value, kpath)))
        return cls(namespace, name, selector, mode, tuple(sorted(ports)), _plain(obj))

    def to_wire(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "spec": _plain(self.spec)}

    @classmethod
    def from_wire(cls, value: object, path: str = "peerAuthentication") -> PeerAuthentication:
        obj = wire.as_mapping(value, path)
        namespace, name = _meta(obj, path)
        return cls.from_spec(namespace, name, obj.get("spec", {}), path=wire.join(path, "spec"))


# ---- spec parsing ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-able deep copy (lists and dicts), so the stored spec is never shared."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _meta(obj: Mapping[str, Any], path: str) -> tuple[str, str]:
    namespace = wire.req_str(obj, "namespace", path)
    if not is_dns_label(namespace):
        raise WireError(wire.join(path, "namespace"), f"{namespace!r} is not a DNS label")
    return namespace, wire.req_str(obj, "name", path)


def _fields(value: object, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    obj = wire.as_mapping({} if value is None else value, path)
    for key in obj:
        if key not in allowed:
            raise WireError(
                wire.join(path, key), f"unknown field {key!r} (allowed: {', '.join(allowed)})"
            )
    return obj


def _selector(value: object, path: str) -> tuple[tuple[str, str], ...]:
    obj = _fields(value, path, ("matchLabels",))
    return wire.frozen_labels(wire.str_map(obj.get("matchLabels"), wire.join(path, "matchLabels")))


def _mtls(value: object, path: str) -> MtlsMode:
    obj = _fields(value, path, ("mode",))
    raw = wire.opt_str(obj, "mode", path, "UNSET")
    try:
        return MtlsMode(raw)
    except ValueError:
        raise WireError(
            wire.join(path, "mode"),
            f"unknown mtls mode {raw!r} (expected STRICT, PERMISSIVE, DISABLE or UNSET)",
        ) from None


def _port(value: object, path: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise WireError(path, f"{value!r} is not a port number (1-65535)")
    return value


def _strings(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...] | None:
    if key not in obj or obj[key] is None:
        return None
    fpath = wire.join(path, key)
    items = wire.as_list(obj[key], fpath)
    if not items:
        raise WireError(fpath, "must not be empty (omit the field to match anything)")
    out: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise WireError(wire.join(fpath, i), f"expected a non-empty string, got {item!r}")
        if "*" in item[1:-1] or (item.count("*") > 1 and item != "*"):
            raise WireError(
                wire.join(fpath, i),
                f"{item!r}: '*' is allowed only as the whole value, a prefix or a suffix",
            )
        out.append(item)
    return tuple(out)


def _principal_ok(value: str) -> bool:
    if "*" in value:
        return True
    try:
        SpiffeId.parse(f"spiffe://{value}")
    except IdentityError:
        return False
    return True


def _principals(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...] | None:
    values = _strings(obj, key, path)
    for i, v in enumerate(values or ()):
        if v.startswith("spiffe://"):
            raise WireError(
                wire.join(wire.join(path, key), i),
                f"malformed principal {v!r}: write it without 'spiffe://' "
                "(<trust-domain>/ns/<namespace>/sa/<service-account>)",
            )
        if not _principal_ok(v):
            raise WireError(
                wire.join(wire.join(path, key), i),
                f"malformed principal {v!r} (expected "
                "<trust-domain>/ns/<namespace>/sa/<service-account>, or a "
                "prefix*/*suffix/* pattern)",
            )
    return values


def _networks(obj: Mapping[str, Any], key: str, path: str) -> tuple[Network, ...] | None:
    values = _strings(obj, key, path)
    if values is None:
        return None
    return tuple(_network(v, wire.join(wire.join(path, key), i)) for i, v in enumerate(values))


def _network(value: str, path: str) -> Network:
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise WireError(
            path, f"bad CIDR {value!r} (expected an IPv4 address or a.b.c.d/n)"
        ) from None


def _ports(obj: Mapping[str, Any], key: str, path: str) -> tuple[int, ...] | None:
    if key not in obj or obj[key] is None:
        return None
    fpath = wire.join(path, key)
    items = wire.as_list(obj[key], fpath)
    if not items:
        raise WireError(fpath, "must not be empty (omit the field to match any port)")
    return tuple(_port(v, wire.join(fpath, i)) for i, v in enumerate(items))


_SOURCE_FIELDS: Final = (
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
)
_UNSUPPORTED_SOURCE: Final = (
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
)
_OPERATION_FIELDS: Final = (
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
    "hosts",
    "notHosts",
)
WHEN_KEYS: Final = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "request.headers[NAME]",
)


def _source(value: object, path: str) -> Source:
    outer = _fields(value, path, ("source",))
    spath = wire.join(path, "source")
    raw = wire.as_mapping(outer.get("source") or {}, spath)
    for key in raw:
        if key in _UNSUPPORTED_SOURCE:
            raise WireError(
                wire.join(spath, key),
                f"{key!r} is not supported by nodemesh (no request authentication)",
            )
    obj = _fields(raw, spath, _SOURCE_FIELDS)
    return Source(
        principals=_principals(obj, "principals", spath),
        not_principals=_principals(obj, "notPrincipals", spath),
        namespaces=_strings(obj, "namespaces", spath),
        not_namespaces=_strings(obj, "notNamespaces", spath),
        ip_blocks=_networks(obj, "ipBlocks", spath),
        not_ip_blocks=_networks(obj, "notIpBlocks", spath),
    )


def _operation(value: object, path: str) -> Operation:
    outer = _fields(value, path, ("operation",))
    opath = wire.join(path, "operation")
    obj = _fields(outer.get("operation") or {}, opath, _OPERATION_FIELDS)
    return Operation(
        ports=_ports(obj, "ports", opath),
        not_ports=_ports(obj, "notPorts", opath),
        methods=_strings(obj, "methods", opath),
        not_methods=_strings(obj, "notMethods", opath),
        paths=_strings(obj, "paths", opath),
        not_paths=_strings(obj, "notPaths", opath),
        hosts=_strings(obj, "hosts", opath),
        not_hosts=_strings(obj, "notHosts", opath),
    )


def _condition(value: object, path: str) -> Condition:
    obj = _fields(value, path, ("key", "values", "notValues"))
    key = wire.req_str(obj, "key", path)
    header = key.startswith("request.headers[") and key.endswith("]") and len(key) > 17
    if key not in WHEN_KEYS[:-1] and not header:
        raise WireError(
            wire.join(path, "key"), f"unsupported key {key!r} (supported: {', '.join(WHEN_KEYS)})"
        )
    values = _strings(obj, "values", path)
    not_values = _strings(obj, "notValues", path)
    if values is None and not_values is None:
        raise WireError(path, "one of values or notValues is required")
    for vkey, vals in (("values", values), ("notValues", not_values)):
        for i, v in enumerate(vals or ()):
            vpath = wire.join(wire.join(path, vkey), i)
            if key in ("source.ip", "destination.ip"):
                _network(v, vpath)
            elif key == "destination.port":
                _port(v, vpath)
            elif (
                key == "source.principal" and not v.startswith("spiffe://") and not _principal_ok(v)
            ):
                raise WireError(vpath, f"malformed principal {v!r}")
    return Condition(key, values, not_values)


def _rule(value: object, path: str) -> Rule:
    obj = _fields(value, path, ("from", "to", "when"))

    def items(key: str) -> Sequence[Any]:
        raw = obj.get(key)
        return () if raw is None else wire.as_list(raw, wire.join(path, key))

    return Rule(
        sources=tuple(
            _source(s, wire.join(wire.join(path, "from"), i)) for i, s in enumerate(items("from"))
        ),
        operations=tuple(
            _operation(o, wire.join(wire.join(path, "to"), i)) for i, o in enumerate(items("to"))
        ),
        when=tuple(
            _condition(c, wire.join(wire.join(path, "when"), i))
            for i, c in enumerate(items("when"))
        ),
    )


# ---- evaluation ------------------------------------------------------------------------------


def match_string(pattern: str, value: str) -> bool:
    """Istio string matching: exact, ``prefix*``, ``*suffix`` or ``*`` (non-empty value)."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: Iterable[str], value: str | None, *, fold: bool = False) -> bool:
    if value is None:
        return False
    if fold:
        value = value.lower()
        return any(match_string(p.lower(), value) for p in patterns)
    return any(match_string(p, value) for p in patterns)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    host: str = ""
    #: header names lower case; a repeated header appears once per value
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Attributes:
    """What the destination ztunnel knows about a connection (and request, at L7)."""

    source_ip: ipaddress.IPv4Address
    destination_ip: ipaddress.IPv4Address
    destination_port: int
    #: the verified peer identity; None for plaintext (no mTLS)
    peer: SpiffeId | None = None
    #: whether the destination port is HTTP (L7 rules apply there)
    http_port: bool = False
    #: None at the connection stage (no request read yet) or on a non-HTTP port
    request: HttpRequest | None = None

    @property
    def principal(self) -> str | None:
        """Istio's principal form: the SPIFFE id without ``spiffe://``."""
        return None if self.peer is None else str(self.peer)[len("spiffe://") :]


def _neg(patterns: tuple[str, ...] | None, value: str | None, *, fold: bool = False) -> bool:
    """A ``not*`` field: True when absent or when nothing in it matches."""
    return patterns is None or not _any(patterns, value, fold=fold)


def _pos(patterns: tuple[str, ...] | None, value: str | None, *, fold: bool = False) -> bool:
    return patterns is None or _any(patterns, value, fold=fold)


def _in_nets(nets: tuple[Network, ...], ip: ipaddress.IPv4Address) -> bool:
    return any(ip in n for n in nets)


def _source_matches(s: Source, a: Attributes) -> bool:
    namespace = None if a.peer is None else a.peer.namespace
    return (
        _pos(s.principals, a.principal)
        and _neg(s.not_principals, a.principal)
        and _pos(s.namespaces, namespace)
        and _neg(s.not_namespaces, namespace)
        and (s.ip_blocks is None or _in_nets(s.ip_blocks, a.source_ip))
        and (s.not_ip_blocks is None or not _in_nets(s.not_ip_blocks, a.source_ip))
    )


def _host_values(host: str) -> list[str]:
    out = [host]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and name:
        out.append(name)
    return out


def _operation_matches(o: Operation, a: Attributes, l7_default: bool) -> bool:
    port = a.destination_port
    if o.ports is not None and port not in o.ports:
        return False
    if o.not_ports is not None and port in o.not_ports:
        return False
    if not o.is_l7:
        return True
    r = a.request
    if r is None:
        return l7_default
    hosts = _host_values(r.host)
    return (
        _pos(o.methods, r.method)
        and _neg(o.not_methods, r.method)
        and _pos(o.paths, r.path)
        and _neg(o.not_paths, r.path)
        and (o.hosts is None or any(_any(o.hosts, h, fold=True) for h in hosts))
        and (o.not_hosts is None or not any(_any(o.not_hosts, h, fold=True) for h in hosts))
    )


def _condition_matches(c: Condition, a: Attributes, l7_default: bool) -> bool:
    header = c.header
    if header is not None:
        if a.request is None:
            return l7_default
        values = [v for k, v in a.request.headers if k == header]
        pos = c.values is None or any(_any(c.values, v) for v in values)
        neg = c.not_values is None or not any(_any(c.not_values, v) for v in values)
        return pos and neg
    if c.key in ("source.ip", "destination.ip"):
        ip = a.source_ip if c.key == "source.ip" else a.destination_ip
        nets = [ipaddress.IPv4Network(v, strict=False) for v in c.values or ()]
        not_nets = [ipaddress.IPv4Network(v, strict=False) for v in c.not_values or ()]
        return (c.values is None or any(ip in n for n in nets)) and not any(
            ip in n for n in not_nets
        )
    value: str | None
    if c.key == "source.namespace":
        value = None if a.peer is None else a.peer.namespace
    elif c.key == "source.principal":
        value = a.principal
        # accept both Istio's form and the spiffe:// form in values
        if value is not None:
            full = str(a.peer)
            return (c.values is None or _any(c.values, value) or _any(c.values, full)) and (
                c.not_values is None or not (_any(c.not_values, value) or _any(c.not_values, full))
            )
    else:  # destination.port
        value = str(a.destination_port)
    return _pos(c.values, value) and _neg(c.not_values, value)


def rule_matches(rule: Rule, a: Attributes, l7_default: bool = False) -> bool:
    """Whether one rule matches. ``l7_default`` is what an L7 field that cannot be evaluated
    (no request) counts as."""
    return (
        (not rule.sources or any(_source_matches(s, a) for s in rule.sources))
        and (
            not rule.operations
            or any(_operation_matches(o, a, l7_default) for o in rule.operations)
        )
        and all(_condition_matches(c, a, l7_default) for c in rule.when)
    )


@dataclass(frozen=True, slots=True)
class Match:
    policy: str
    rule: int
    action: Action

    def __str__(self) -> str:
        return f"{self.action.value} {self.policy} rules[{self.rule}]"


@dataclass(frozen=True, slots=True)
class DryRun:
    """What the dry-run policies would have decided had they been enforced."""

    allowed: bool
    deciding: Match | None
    policies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: the DENY or ALLOW rule that decided; None when allowed for lack of ALLOW policies, or
    #: denied because no ALLOW rule matched
    deciding: Match | None
    reason: str
    audits: tuple[Match, ...] = ()
    dry_run: DryRun | None = None
    warnings: tuple[str, ...] = ()
    #: at the connection stage on an HTTP port: L7 rules remain to be evaluated per request
    needs_request: bool = False


def _first_match(
    policies: Sequence[AuthorizationPolicy], a: Attributes, l7_default: bool
) -> Match | None:
    for p in policies:
        for i, rule in enumerate(p.rules):
            if rule_matches(rule, a, l7_default):
                return Match(p.key, i, p.action)
    return None


def _decide(
    policies: Sequence[AuthorizationPolicy], a: Attributes, warnings: list[str] | None
) -> tuple[bool, Match | None, str, bool]:
    """(allowed, deciding, reason, needs_request) for the enforced set ``policies``."""
    deny = [p for p in policies if p.action is Action.DENY]
    allow = [p for p in policies if p.action is Action.ALLOW]
    connection_stage = a.http_port and a.request is None
    l7_rules = any(r.is_l7 for p in policies if p.action is not Action.AUDIT for r in p.rules)
    if warnings is not None and not a.http_port:
        for p in policies:
            for i, r in enumerate(p.rules):
                if r.is_l7 and p.action is Action.DENY:
                    warnings.append(
                        f"{p.key} rules[{i}]: L7 attributes on non-HTTP port "
                        f"{a.destination_port}: the rule denies at L4 (fail closed)"
                    )
                elif r.is_l7 and p.action is Action.ALLOW:
                    warnings.append(
                        f"{p.key} rules[{i}]: L7 attributes on non-HTTP port "
                        f"{a.destination_port}: the rule never matches (fail closed)"
                    )
    # DENY: L7 parts count as matching on a non-HTTP port, and as not (yet) matching at the
    # connection stage of an HTTP port
    hit = _first_match(deny, a, l7_default=not connection_stage)
    if hit is not None:
        return False, hit, f"denied by {hit}", False
    if allow:
        hit = _first_match(allow, a, l7_default=connection_stage)
        if hit is None:
            return False, None, "denied: no ALLOW policy rule matched", False
        return True, hit, f"allowed by {hit}", connection_stage and l7_rules
    return True, None, "allowed: no ALLOW policy applies", connection_stage and l7_rules


def evaluate(
    policies: Iterable[AuthorizationPolicy],
    *,
    namespace: str,
    labels: Mapping[str, str],
    attributes: Attributes,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Decision:
    """The decision for one connection (``attributes.request is None``) or request, for the
    destination workload in ``namespace`` with ``labels``."""
    applicable = sorted(
        (p for p in policies if p.applies_to(namespace, labels, root_namespace)),
        key=lambda p: p.key,
    )
    enforced = [p for p in applicable if not p.dry_run]
    shadow = [p for p in applicable if p.dry_run]
    warnings: list[str] = []
    allowed, deciding, reason, needs_request = _decide(enforced, attributes, warnings)
    audits = tuple(
        Match(p.key, i, Action.AUDIT)
        for p in enforced
        if p.action is Action.AUDIT
        for i, r in enumerate(p.rules)
        if rule_matches(
            r, attributes, l7_default=not (attributes.http_port and attributes.request is None)
        )
    )
    dry: DryRun | None = None
    if shadow:
        d_allowed, d_deciding, _, _ = _decide(enforced + shadow, attributes, warnings)
        dry = DryRun(d_allowed, d_deciding, tuple(p.key for p in shadow))
    return Decision(
        allowed, deciding, reason, audits, dry, tuple(dict.fromkeys(warnings)), needs_request
    )


def is_http_port(services: Iterable[Service], workload: PodUid, port: int) -> bool:
    """A workload port is HTTP when a Service with the workload as an endpoint maps a port
    declared HTTP (``appProtocol``, or an ``http``/``http-*`` name) to it."""
    for service in services:
        if any(e.uid == workload for e in service.endpoints) and any(
            p.target_port == port and p.is_http for p in service.ports
        ):
            return True
    return False


def l7_warnings(
    policy: AuthorizationPolicy,
    workloads: Iterable[Workload],
    services: Sequence[Service],
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> list[tuple[str, str]]:
    """Rules whose L7 attributes cannot apply on some port of a workload they select, as
    ``(field path, message)``: the fail-closed cases of the module docstring, reported on the
    policy. The ports are those the rule names, else the workload's Service target ports."""
    if policy.action is Action.AUDIT:
        return []
    selected = [
        w
        for w in workloads
        if w.enrolled and policy.applies_to(w.namespace, w.label_map, root_namespace)
    ]
    out: list[tuple[str, str]] = []
    for i, rule in enumerate(policy.rules):
        if not rule.is_l7:
            continue
        named = {p for o in rule.operations for p in (o.ports or ())}
        bad: list[str] = []
        for w in sorted(selected, key=lambda w: (w.namespace, w.name)):
            ports = named or {
                p.target_port
                for svc in services
                if any(e.uid == w.uid for e in svc.endpoints)
                for p in svc.ports
            }
            bad += [
                f"{w.namespace}/{w.name}:{p}"
                for p in sorted(ports)
                if not is_http_port(services, w.uid, p)
            ]
        if not bad:
            continue
        j = next((j for j, o in enumerate(rule.operations) if o.is_l7), None)
        path = f"spec.rules[{i}]" + (f".to[{j}].operation" if j is not None else ".when")
        effect = (
            "never matches there (fail closed)"
            if policy.action is Action.ALLOW
            else "denies there on its L4 part (fail closed)"
        )
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        out.append(
            (
                path,
                f"warning: L7 attributes cannot apply on non-HTTP port(s) {shown}; "
                f"the {policy.action.value} rule {effect}",
            )
        )
    return out


def has_l7_rules(
    policies: Iterable[AuthorizationPolicy],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> bool:
    return any(
        r.is_l7
        for p in policies
        if p.applies_to(namespace, labels, root_namespace)
        for r in p.rules
    )


# ---- peer authentication ---------------------------------------------------------------------


def resolve_mtls(
    peer_authentications: Iterable[PeerAuthentication],
    *,
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> MtlsMode:
    """The effective mode for a workload port: port-level > selector > namespace > mesh-wide;
    ``UNSET`` inherits from the next level; the default is ``STRICT``. Of two candidates at one
    level, the first by name wins (Istio takes the oldest; files have no age)."""
    items = sorted(peer_authentications, key=lambda p: p.key)
    selected = [
        p
        for p in items
        if p.namespace == namespace and p.selector and _labels_match(p.selector, labels)
    ]
    ns_wide = [p for p in items if p.namespace == namespace and not p.selector]
    mesh = [p for p in items if p.namespace == root_namespace and not p.selector]
    chain: list[MtlsMode] = []
    for p in selected:
        chain.extend(m for pnum, m in p.port_level if pnum == port)
    chain.extend(p.mode for p in selected)
    chain.extend(p.mode for p in ns_wide)
    chain.extend(p.mode for p in mesh)
    for mode in chain:
        if mode is not MtlsMode.UNSET:
            return mode
    return MtlsMode.STRICT


def plaintext_allowed(mode: MtlsMode) -> bool:
    return mode in (MtlsMode.PERMISSIVE, MtlsMode.DISABLE)
