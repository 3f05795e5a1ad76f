"""Translation of Kubernetes-shaped objects (Namespace, Pod, Service, ServiceAccount, all ``v1``;
EndpointSlice in ``discovery.k8s.io/v1``; AuthorizationPolicy and PeerAuthentication in
``security.nodemesh.io/v1``) into the mesh model
(:class:`meshapi.model.Workload`, :class:`meshapi.model.Service`, :mod:`meshapi.policy`).

Pure: no I/O. Every config source (the local directory now, Kubernetes later) feeds
:func:`translate` with :class:`SourceObject` s (the raw decoded document plus where it came from).

Invariants:

* An object that fails validation is not applied; the error names the source (file), the object
  (``Kind namespace/name``, or ``document N`` when it cannot be named) and the field path.
* The last good version of an invalid object stays in force (pass the previous
  :attr:`Translation.accepted` as ``last_good``); so do all objects of a source that could not be
  read at all (``stale_sources``).
* Of two definitions of the same object the one that was in force before wins; otherwise the
  first in input order. The other is rejected with both sources named.
* Pods without ``status.podIP`` are not workloads yet (not an error); neither are pods that have
  terminated (``status.phase`` Succeeded or Failed: their IP may already belong to another pod)
  nor host-network pods (their IP is the node's).
* A Service with a selector has the selected workloads as endpoints. A Service without one (its
  endpoints managed by hand or by another controller) has the workloads named by its ready
  EndpointSlice endpoints (label ``kubernetes.io/service-name``; by ``targetRef`` pod uid, else by
  address); slice addresses that are not mesh workloads are not endpoints of the mesh.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict

from meshapi import wire
from meshapi.constants import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    LOCAL_NETNS_ANNOTATION,
)
from meshapi.enrollment import is_enrolled
from meshapi.errors import WireError
from meshapi.ids import NodeName, PodUid, SpiffeId, is_dns_label, is_dns_subdomain
from meshapi.kubeobjects import MetadataRaw, NamespaceRaw, PodRaw
from meshapi.model import Endpoint, Service, ServicePort, Workload
from meshapi.policy import (
    API_VERSION as POLICY_API_VERSION,
)
from meshapi.policy import (
    DRY_RUN_ANNOTATION,
    KIND_AUTHZ,
    KIND_PEER_AUTHN,
    AuthorizationPolicy,
    PeerAuthentication,
    l7_warnings,
)

# ---- raw objects (the edge) ------------------------------------------------------------------


class ServicePortRaw(TypedDict, total=False):
    name: str
    port: int
    targetPort: int | str
    protocol: str
    appProtocol: str


class ServiceSpecRaw(TypedDict, total=False):
    clusterIP: str
    ports: list[ServicePortRaw]
    selector: dict[str, str]


class ServiceRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataRaw
    spec: ServiceSpecRaw


class ServiceAccountRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataRaw


class ObjectReferenceRaw(TypedDict, total=False):
    kind: str
    name: str
    namespace: str
    uid: str


class EndpointConditionsRaw(TypedDict, total=False):
    ready: bool | None


class EndpointRaw(TypedDict, total=False):
    addresses: list[str]
    conditions: EndpointConditionsRaw
    targetRef: ObjectReferenceRaw


class EndpointSliceRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: MetadataRaw
    addressType: str
    endpoints: list[EndpointRaw]


RawObject = PodRaw | ServiceRaw | NamespaceRaw | ServiceAccountRaw | EndpointSliceRaw

KIND_ENDPOINT_SLICE: Final = "EndpointSlice"
KINDS: Final = (
    "Namespace",
    "Pod",
    "Service",
    "ServiceAccount",
    KIND_ENDPOINT_SLICE,
    KIND_AUTHZ,
    KIND_PEER_AUTHN,
)
API_VERSION: Final = "v1"
#: apiVersion per kind (v1 unless listed)
API_VERSIONS: Final = {
    KIND_AUTHZ: POLICY_API_VERSION,
    KIND_PEER_AUTHN: POLICY_API_VERSION,
    KIND_ENDPOINT_SLICE: "discovery.k8s.io/v1",
}
#: the label that ties an EndpointSlice to its Service
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
#: pods in these phases have stopped; their IP can be reused
TERMINATED_PHASES: Final = frozenset({"Succeeded", "Failed"})
_POLICY_TOP_LEVEL: Final = ("apiVersion", "kind", "metadata", "spec", "status")
DEFAULT_NAMESPACE: Final = "default"
DEFAULT_SERVICE_ACCOUNT: Final = "default"
_UID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_DNS, "pods.local.nodemesh.io")


@dataclass(frozen=True, slots=True)
class SourceObject:
    """One decoded document and where it came from (``source``: a file path, or e.g.
    ``kubernetes``; ``index``: the document's position in that source, 0-based)."""

    source: str
    index: int
    body: object


@dataclass(frozen=True, order=True, slots=True)
class ConfigIssue:
    """One configuration error, for logs, ``/debug/status`` and metrics."""

    source: str
    object: str
    field: str
    message: str

    def __str__(self) -> str:
        parts = [self.source, self.object, self.field]
        return ": ".join(p for p in parts if p) + f": {self.message}"

    def to_json(self) -> dict[str, str]:
        return {
            "file": self.source,
            "object": self.object,
            "field": self.field,
            "message": self.message,
        }


# ---- validated objects -----------------------------------------------------------------------


@dataclass(frozen=True, order=True, slots=True)
class ObjectKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )


@dataclass(frozen=True, slots=True)
class PodObj:
    key: ObjectKey
    uid: str
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    node: str | None
    service_account: str
    ip: ipaddress.IPv4Address | None
    #: (container port name, number) for every named TCP container port
    named_ports: tuple[tuple[str, int], ...]
    #: scheduled and able to join the mesh (neither terminated nor host-network), with or
    #: without an IP yet
    meshable: bool = True


@dataclass(frozen=True, slots=True)
class ServicePortSpec:
    index: int
    port: int
    target: int | str
    name: str
    app_protocol: str


@dataclass(frozen=True, slots=True)
class ServiceObj:
    key: ObjectKey
    vip: ipaddress.IPv4Address | None
    ports: tuple[ServicePortSpec, ...]
    selector: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class NamespaceObj:
    key: ObjectKey
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ServiceAccountObj:
    key: ObjectKey


@dataclass(frozen=True, slots=True)
class EndpointSliceObj:
    key: ObjectKey
    #: the Service it belongs to ("" when unlabelled: then it belongs to none)
    service: str
    #: ready endpoints: pod uids from targetRef, and addresses of endpoints without one
    pod_uids: tuple[str, ...]
    addresses: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True, slots=True)
class AuthzObj:
    key: ObjectKey
    policy: AuthorizationPolicy


@dataclass(frozen=True, slots=True)
class PeerAuthnObj:
    key: ObjectKey
    policy: PeerAuthentication


Parsed = (
    PodObj
    | ServiceObj
    | NamespaceObj
    | ServiceAccountObj
    | EndpointSliceObj
    | AuthzObj
    | PeerAuthnObj
)


@dataclass(frozen=True, slots=True)
class Accepted:
    """An object in force, and where it was defined."""

    parsed: Parsed
    source: str
    index: int


class ObjectError(Exception):
    """Validation of one object failed. ``key`` is None when the object cannot even be named."""

    def __init__(self, key: ObjectKey | None, issue: ConfigIssue) -> None:
        self.key = key
        self.issue = issue
        super().__init__(str(issue))


# ---- parsing ---------------------------------------------------------------------------------


def parse_object(obj: SourceObject) -> Parsed:
    """Validate one document into a typed object, or raise :class:`ObjectError`."""
    where = f"document {obj.index}"

    def fail(key: ObjectKey | None, desc: str, path: str, message: str) -> ObjectError:
        return ObjectError(key, ConfigIssue(obj.source, desc, path, message))

    try:
        body = wire.as_mapping(obj.body, "")
        kind = wire.req_str(body, "kind", "")
        api_version = wire.req_str(body, "apiVersion", "")
    except WireError as exc:
        raise fail(None, where, exc.path, exc.message) from None
    if kind not in KINDS:
        raise fail(None, where, "kind", f"unknown kind {kind!r} (supported: {', '.join(KINDS)})")
    expected_version = API_VERSIONS.get(kind, API_VERSION)
    if api_version != expected_version:
        raise fail(
            None,
            f"{kind} in {where}",
            "apiVersion",
            f"unsupported apiVersion {api_version!r} for {kind} (expected {expected_version!r})",
        )
    try:
        meta = wire.as_mapping(body.get("metadata"), "metadata")
        name = wire.req_str(meta, "name", "metadata")
        namespaced = kind != "Namespace"
        namespace = (
            (wire.opt_str(meta, "namespace", "metadata") or DEFAULT_NAMESPACE)
            if (namespaced)
            else ""
        )
        if namespaced and not is_dns_label(namespace):
            raise WireError(
                "metadata.namespace",
                f"{namespace!r} is not a valid namespace name (RFC 1123 label)",
            )
        name_ok = (
            is_dns_subdomain(name)
            if kind in ("Pod", "ServiceAccount", KIND_ENDPOINT_SLICE, KIND_AUTHZ, KIND_PEER_AUTHN)
            else (is_dns_label(name))
        )
        if not name_ok:
            raise WireError("metadata.name", f"{name!r} is not a valid {kind} name")
    except WireError as exc:
        raise fail(None, f"{kind} in {where}", exc.path, exc.message) from None
    key = ObjectKey(kind, namespace, name)
    try:
        if kind == "Pod":
            return _parse_pod(key, body, meta)
        if kind == "Service":
            return _parse_service(key, body)
        if kind == "Namespace":
            return NamespaceObj(key, _labels(meta))
        if kind in (KIND_AUTHZ, KIND_PEER_AUTHN):
            return _parse_policy(key, body, meta)
        if kind == KIND_ENDPOINT_SLICE:
            return _parse_endpoint_slice(key, body, meta)
        return ServiceAccountObj(key)
    except WireError as exc:
        raise fail(key, str(key), exc.path, exc.message) from None


def _labels(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return wire.frozen_labels(wire.str_map(meta.get("labels"), "metadata.labels"))


def _parse_pod(key: ObjectKey, body: Mapping[str, Any], meta: Mapping[str, Any]) -> PodObj:
    labels = _labels(meta)
    annotations = wire.frozen_labels(wire.str_map(meta.get("annotations"), "metadata.annotations"))
    uid = wire.opt_str(meta, "uid", "metadata") or str(
        uuid.uuid5(_UID_NAMESPACE, f"{key.namespace}/{key.name}")
    )
    spec = wire.as_mapping(body.get("spec"), "spec")
    node = wire.opt_str(spec, "nodeName", "spec") or None
    sa = wire.opt_str(spec, "serviceAccountName", "spec") or DEFAULT_SERVICE_ACCOUNT
    if not is_dns_subdomain(sa):
        raise WireError("spec.serviceAccountName", f"{sa!r} is not a valid service account name")
    named: list[tuple[str, int]] = []
    containers = wire.as_list(spec.get("containers", []) or [], "spec.containers")
    for ci, container in enumerate(containers):
        cpath = f"spec.containers[{ci}]"
        c = wire.as_mapping(container, cpath)
        ports = wire.as_list(c.get("ports", []) or [], f"{cpath}.ports")
        for pi, port in enumerate(ports):
            ppath = f"{cpath}.ports[{pi}]"
            p = wire.as_mapping(port, ppath)
            number = wire.req_int(p, "containerPort", ppath, 1, 65535)
            pname = wire.opt_str(p, "name", ppath)
            protocol = wire.opt_str(p, "protocol", ppath, "TCP")
            if pname and protocol == "TCP":
                named.append((pname, number))
    status = wire.as_mapping(body.get("status") or {}, "status")
    ip_raw = status.get("podIP")
    ip = None if ip_raw in (None, "") else wire.ipv4(ip_raw, "status.podIP")
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        raise WireError(
            "spec.hostNetwork", f"expected a boolean, got {wire.type_name(host_network)}"
        )
    meshable = wire.opt_str(status, "phase", "status") not in TERMINATED_PHASES and not (
        host_network
    )
    if not meshable:
        ip = None  # not a workload of the mesh (see the module docstring)
    if ip is not None and node is None:
        raise WireError(
            "spec.nodeName",
            "required field is missing (a pod with an IP must be scheduled on a node)",
        )
    return PodObj(key, uid, labels, annotations, node, sa, ip, tuple(named), meshable)


def _parse_policy(
    key: ObjectKey, body: Mapping[str, Any], meta: Mapping[str, Any]
) -> AuthzObj | PeerAuthnObj:
    """Istio's spec semantics (meshapi.policy); unknown fields anywhere are errors."""
    for field_name in body:
        if field_name not in _POLICY_TOP_LEVEL:
            raise WireError(field_name, f"unknown field {field_name!r}")
    annotations = wire.str_map(meta.get("annotations"), "metadata.annotations")
    dry_raw = annotations.get(DRY_RUN_ANNOTATION, "false")
    if dry_raw not in ("true", "false"):
        raise WireError(
            f"metadata.annotations[{DRY_RUN_ANNOTATION}]",
            f'must be "true" or "false", got {dry_raw!r}',
        )
    spec = body.get("spec") or {}
    if key.kind == KIND_AUTHZ:
        return AuthzObj(
            key,
            AuthorizationPolicy.from_spec(key.namespace, key.name, spec, dry_run=dry_raw == "true"),
        )
    if dry_raw == "true":
        raise WireError(
            f"metadata.annotations[{DRY_RUN_ANNOTATION}]",
            "dry-run applies to AuthorizationPolicy only",
        )
    return PeerAuthnObj(key, PeerAuthentication.from_spec(key.namespace, key.name, spec))


def _parse_endpoint_slice(
    key: ObjectKey, body: Mapping[str, Any], meta: Mapping[str, Any]
) -> EndpointSliceObj:
    service = dict(_labels(meta)).get(SERVICE_NAME_LABEL, "")
    address_type = wire.req_str(body, "addressType", "")
    uids: list[str] = []
    addresses: list[ipaddress.IPv4Address] = []
    raw_endpoints = body.get("endpoints")
    for i, endpoint in enumerate(
        wire.as_list([] if raw_endpoints is None else raw_endpoints, "endpoints")
    ):
        path = f"endpoints[{i}]"
        e = wire.as_mapping(endpoint, path)
        conditions = wire.as_mapping(e.get("conditions") or {}, f"{path}.conditions")
        ready = conditions.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise WireError(f"{path}.conditions.ready", "expected a boolean")
        raw_addresses = wire.as_list(
            [] if e.get("addresses") is None else e["addresses"], f"{path}.addresses"
        )
        ref = wire.as_mapping(e.get("targetRef") or {}, f"{path}.targetRef")
        if ready is False:
            continue  # null means ready (the API's own default)
        ref_uid = wire.opt_str(ref, "uid", f"{path}.targetRef")
        if wire.opt_str(ref, "kind", f"{path}.targetRef") == "Pod" and ref_uid:
            uids.append(ref_uid)
        elif address_type == "IPv4":
            for j, address in enumerate(raw_addresses):
                addresses.append(wire.ipv4(address, f"{path}.addresses[{j}]"))
    return EndpointSliceObj(key, service, tuple(uids), tuple(addresses))


def _parse_service(key: ObjectKey, body: Mapping[str, Any]) -> ServiceObj:
    spec = wire.as_mapping(body.get("spec"), "spec")
    vip_raw = spec.get("clusterIP")
    vip = None if vip_raw in (None, "", "None") else wire.ipv4(vip_raw, "spec.clusterIP")
    ports: list[ServicePortSpec] = []
    for i, port in enumerate(wire.as_list(spec.get("ports", []) or [], "spec.ports")):
        path = f"spec.ports[{i}]"
        p = wire.as_mapping(port, path)
        number = wire.req_int(p, "port", path, 1, 65535)
        name = wire.opt_str(p, "name", path)
        app_protocol = wire.opt_str(p, "appProtocol", path)
        protocol = wire.opt_str(p, "protocol", path, "TCP")
        target_raw = p.get("targetPort", number)
        target: int | str
        if isinstance(target_raw, str):
            if not target_raw:
                raise WireError(f"{path}.targetPort", "must not be empty")
            target = int(target_raw) if target_raw.isdigit() else target_raw
            if isinstance(target, int):
                wire.check_int(target, f"{path}.targetPort", 1, 65535)
        else:
            target = wire.check_int(target_raw, f"{path}.targetPort", 1, 65535)
        if protocol != "TCP":
            continue  # the mesh carries TCP only; other ports are not its business
        ports.append(ServicePortSpec(i, number, target, name, app_protocol))
    selector = wire.frozen_labels(wire.str_map(spec.get("selector"), "spec.selector"))
    return ServiceObj(key, vip, tuple(ports), selector)


# ---- translation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Translation:
    workloads: dict[str, Workload]
    services: dict[str, Service]
    errors: tuple[ConfigIssue, ...]
    #: the objects in force; pass as ``last_good`` to the next call
    accepted: dict[ObjectKey, Accepted] = field(default_factory=dict)
    authorization_policies: dict[str, AuthorizationPolicy] = field(default_factory=dict)
    peer_authentications: dict[str, PeerAuthentication] = field(default_factory=dict)
    #: accepted policies with rules that fail closed somewhere (not errors: they stay in force)
    warnings: tuple[ConfigIssue, ...] = ()
    #: (node, namespace, service account) of every pod scheduled on a node that may join the
    #: mesh, IP or not: what a node may request certificates for. On Kubernetes a pod gets its
    #: IP only after its sandbox exists, and the CNI plugin holds the sandbox until the pod is
    #: redirected, which needs the certificate first.
    scheduled: frozenset[tuple[str, str, str]] = frozenset()


def translate(
    objects: Iterable[SourceObject],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    last_good: Mapping[ObjectKey, Accepted] | None = None,
    stale_sources: Iterable[str] = (),
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Translation:
    previous: Mapping[ObjectKey, Accepted] = last_good or {}
    issues: list[ConfigIssue] = []
    candidates: dict[ObjectKey, list[Accepted]] = {}
    failed: list[tuple[ObjectError, SourceObject]] = []
    for obj in objects:
        try:
            parsed = parse_object(obj)
        except ObjectError as exc:
            issues.append(exc.issue)
            failed.append((exc, obj))
            continue
        candidates.setdefault(parsed.key, []).append(Accepted(parsed, obj.source, obj.index))

    accepted: dict[ObjectKey, Accepted] = {}
    for key, defs in candidates.items():
        winner = defs[0]
        before = previous.get(key)
        if before is not None:
            winner = next((d for d in defs if d.source == before.source), winner)
        accepted[key] = winner
        for other in defs:
            if other is winner:
                continue
            issues.append(
                ConfigIssue(
                    other.source,
                    str(key),
                    "",
                    f"duplicate object: already defined in {winner.source} (document "
                    f"{winner.index}); this definition in {other.source} (document {other.index}) "
                    "is ignored",
                )
            )

    # an invalid object leaves its last good version in force
    for error, obj in failed:
        if error.key is not None:
            kept = previous.get(error.key)
            if kept is not None and error.key not in accepted:
                accepted[error.key] = kept
            continue
        for key, kept in previous.items():
            if kept.source == obj.source and kept.index == obj.index and key not in accepted:
                accepted[key] = kept
    stale = set(stale_sources)
    if stale:
        for key, kept in previous.items():
            if kept.source in stale and key not in accepted:
                accepted[key] = kept

    workloads, services, build_issues = build(accepted.values(), trust_domain)
    issues.extend(build_issues)
    authz, peer_authn = policies(accepted.values())
    warnings: list[ConfigIssue] = []
    for key, a in sorted(accepted.items()):
        if isinstance(a.parsed, AuthzObj):
            for path, message in l7_warnings(
                a.parsed.policy, workloads.values(), list(services.values()), root_namespace
            ):
                warnings.append(ConfigIssue(a.source, str(key), path, message))
    return Translation(
        workloads,
        services,
        tuple(sorted(set(issues))),
        accepted,
        authz,
        peer_authn,
        tuple(warnings),
        scheduled_identities(accepted.values()),
    )


def scheduled_identities(accepted: Iterable[Accepted]) -> frozenset[tuple[str, str, str]]:
    return frozenset(
        (a.parsed.node, a.parsed.key.namespace, a.parsed.service_account)
        for a in accepted
        if isinstance(a.parsed, PodObj) and a.parsed.node is not None and a.parsed.meshable
    )


def policies(
    accepted: Iterable[Accepted],
) -> tuple[dict[str, AuthorizationPolicy], dict[str, PeerAuthentication]]:
    """The policies in force, by ``namespace/name``."""
    authz: dict[str, AuthorizationPolicy] = {}
    peer_authn: dict[str, PeerAuthentication] = {}
    for a in sorted(accepted, key=lambda a: a.parsed.key):
        if isinstance(a.parsed, AuthzObj):
            authz[a.parsed.policy.key] = a.parsed.policy
        elif isinstance(a.parsed, PeerAuthnObj):
            peer_authn[a.parsed.policy.key] = a.parsed.policy
    return authz, peer_authn


def build(
    accepted: Iterable[Accepted], trust_domain: str
) -> tuple[dict[str, Workload], dict[str, Service], list[ConfigIssue]]:
    """Workloads and services from validated objects (cross-object rules live here)."""
    items = sorted(accepted, key=lambda a: a.parsed.key)
    namespaces = {
        a.parsed.key.name: dict(a.parsed.labels)
        for a in items
        if isinstance(a.parsed, NamespaceObj)
    }
    issues: list[ConfigIssue] = []
    workloads: dict[str, Workload] = {}
    pods: dict[str, PodObj] = {}
    for a in items:
        pod = a.parsed
        if not isinstance(pod, PodObj) or pod.ip is None or pod.node is None:
            continue
        w = _workload(pod, namespaces.get(pod.key.namespace, {}), trust_domain)
        if w.key in workloads:
            issues.append(
                ConfigIssue(
                    a.source,
                    str(pod.key),
                    "metadata.uid",
                    f"uid {w.key!r} is used by another pod; pod ignored",
                )
            )
            continue
        workloads[w.key] = w
        pods[w.key] = pod
    slices: dict[tuple[str, str], list[EndpointSliceObj]] = {}
    for a in items:
        if isinstance(a.parsed, EndpointSliceObj) and a.parsed.service:
            slices.setdefault((a.parsed.key.namespace, a.parsed.service), []).append(a.parsed)
    services: dict[str, Service] = {}
    index = _WorkloadIndex(workloads.values())
    for a in items:
        svc = a.parsed
        if isinstance(svc, ServiceObj):
            service, svc_issues = _service(
                svc, a.source, index, pods, slices.get((svc.key.namespace, svc.key.name), [])
            )
            services[service.key] = service
            issues.extend(svc_issues)
    return workloads, services, issues


def _workload(pod: PodObj, ns_labels: Mapping[str, str], trust_domain: str) -> Workload:
    assert pod.ip is not None and pod.node is not None
    labels = dict(pod.labels)
    return Workload(
        uid=PodUid(pod.uid),
        name=pod.key.name,
        namespace=pod.key.namespace,
        service_account=pod.service_account,
        identity=SpiffeId(trust_domain, pod.key.namespace, pod.service_account),
        node=NodeName(pod.node),
        ip=pod.ip,
        enrolled=is_enrolled(labels, ns_labels),
        labels=pod.labels,
        netns=dict(pod.annotations).get(LOCAL_NETNS_ANNOTATION) or None,
    )


class _WorkloadIndex:
    """Workloads by namespace and by (namespace, label, value): a selector costs what it
    matches, not a pass over every workload (services x pods grows fast)."""

    def __init__(self, workloads: Iterable[Workload]) -> None:
        self.by_namespace: dict[str, list[Workload]] = {}
        self._by_label: dict[tuple[str, str, str], set[str]] = {}
        self._by_key: dict[str, Workload] = {}
        for w in workloads:
            self.by_namespace.setdefault(w.namespace, []).append(w)
            self._by_key[w.key] = w
            for k, v in w.labels:
                self._by_label.setdefault((w.namespace, k, v), set()).add(w.key)

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[Workload]:
        """The workloads of ``namespace`` whose labels include every pair of a non-empty
        ``selector``."""
        sets = sorted(
            (self._by_label.get((namespace, k, v), set()) for k, v in selector.items()), key=len
        )
        keys = set(sets[0]).intersection(*sets[1:]) if sets else set()
        return [self._by_key[k] for k in keys]


def _service(
    svc: ServiceObj,
    source: str,
    index: _WorkloadIndex,
    pods: Mapping[str, PodObj],
    slices: Sequence[EndpointSliceObj] = (),
) -> tuple[Service, list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    selected: list[Workload] = []
    if not svc.selector and slices:
        uids = {u for s in slices for u in s.pod_uids}
        ips = {ip for s in slices for ip in s.addresses}
        for w in index.by_namespace.get(svc.key.namespace, ()):
            if w.uid in uids or w.ip in ips:
                selected.append(w)
    if svc.selector:
        selected.extend(index.select(svc.key.namespace, dict(svc.selector)))
    selected.sort(key=lambda w: (w.ip, w.key))
    ports: list[ServicePort] = []
    for p in svc.ports:
        target = _resolve_target(p, selected, pods)
        if isinstance(target, str):
            issues.append(
                ConfigIssue(source, str(svc.key), f"spec.ports[{p.index}].targetPort", target)
            )
            continue
        if target is None:
            continue  # named target port and no endpoints yet: nothing to resolve against
        ports.append(ServicePort(p.port, target, p.name, p.app_protocol))
    service = Service(
        namespace=svc.key.namespace,
        name=svc.key.name,
        vip=svc.vip,
        ports=tuple(ports),
        endpoints=tuple(Endpoint(w.uid, w.ip) for w in selected),
    )
    return service, issues


def _resolve_target(
    p: ServicePortSpec, endpoints: Sequence[Workload], pods: Mapping[str, PodObj]
) -> int | str | None:
    """The target port number, None if unresolvable for lack of endpoints, or an error text."""
    if isinstance(p.target, int):
        return p.target
    numbers: dict[int, list[str]] = {}
    missing: list[str] = []
    for w in endpoints:
        named = dict(pods[w.key].named_ports)
        if p.target in named:
            numbers.setdefault(named[p.target], []).append(w.name)
        else:
            missing.append(w.name)
    if missing:
        return (
            f"named port {p.target!r} is not declared by endpoint pod(s) "
            f"{', '.join(sorted(missing))}; port ignored"
        )
    if len(numbers) > 1:
        shown = "; ".join(
            f"{n} on {', '.join(sorted(names))}" for n, names in sorted(numbers.items())
        )
        return (
            f"named port {p.target!r} resolves to different numbers ({shown}); all endpoints "
            "must agree; port ignored"
        )
    if not numbers:
        return None
    return next(iter(numbers))
