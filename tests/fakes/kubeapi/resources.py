"""The resource table of the fake API server.

Each served resource is one `ResourceType` row. Adding a resource is adding a row to `RESOURCES`
(a CRD is a row like any other: the fake does not distinguish built-in from custom types except
for `builtin`, which decides whether list items carry ``kind``/``apiVersion`` as on a real server).

Invariants:
* ``(group, version, plural)`` and ``(apiVersion, kind)`` are both unique across the table.
* ``group == ""`` means the legacy core group served under ``/api/v1``; others are under
  ``/apis/<group>/<version>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

ALL_VERBS: Final = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    #: field selectors accepted besides metadata.name and metadata.namespace, each a dotted path
    #: into the object (the real server supports a fixed set per resource, as here)
    extra_fields: tuple[str, ...] = ()
    #: metadata.generation is set to 1 on create and bumped when anything outside metadata and
    #: status changes (workload controllers and CRDs); pods and other core objects do not have one
    has_generation: bool = False
    #: built-in types: list items omit kind/apiVersion (as the real server's typed lists do);
    #: custom resources keep them (unstructured lists)
    builtin: bool = True
    #: DELETE answers with the deleted object (graceful-deletion types such as pods) rather than
    #: a Status
    delete_returns_object: bool = False
    #: ``status`` is written only through the ``/status`` subresource: writes to the resource
    #: itself keep the stored status (test hooks may set both)
    status_subresource: bool = False
    #: stored but not persisted: TokenReview is create-only and answered from the token registry
    virtual: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def qualified(self) -> str:
        """``plural.group`` as RBAC and error messages spell it (``pods`` for the core group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def collection_path(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


_CREATE_ONLY: Final = ("create",)

RESOURCES: Final[tuple[ResourceType, ...]] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        status_subresource=True,
        short_names=("ns",),
        extra_fields=("status.phase",),
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        namespaced=True,
        status_subresource=True,
        short_names=("po",),
        extra_fields=(
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "spec.restartPolicy",
            "spec.schedulerName",
        ),
        delete_returns_object=True,
    ),
    ResourceType(
        "",
        "v1",
        "services",
        "Service",
        namespaced=True,
        status_subresource=True,
        short_names=("svc",),
    ),
    ResourceType(
        "", "v1", "serviceaccounts", "ServiceAccount", namespaced=True, short_names=("sa",)
    ),
    ResourceType("", "v1", "secrets", "Secret", namespaced=True, extra_fields=("type",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True, short_names=("cm",)),
    ResourceType(
        "",
        "v1",
        "endpoints",
        "Endpoints",
        namespaced=True,
        short_names=("ep",),
        singular="endpoints",
    ),
    ResourceType(
        "", "v1", "nodes", "Node", namespaced=False, status_subresource=True, short_names=("no",)
    ),
    ResourceType(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        namespaced=True,
        extra_fields=("addressType",),
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    ResourceType(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        namespaced=True,
        status_subresource=True,
        short_names=("ds",),
        has_generation=True,
    ),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        namespaced=True,
        status_subresource=True,
        short_names=("deploy",),
        has_generation=True,
    ),
    ResourceType(
        "security.nodemesh.io",
        "v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        namespaced=True,
        status_subresource=True,
        has_generation=True,
        builtin=False,
    ),
    ResourceType(
        "security.nodemesh.io",
        "v1",
        "peerauthentications",
        "PeerAuthentication",
        namespaced=True,
        status_subresource=True,
        has_generation=True,
        builtin=False,
    ),
    ResourceType(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        namespaced=False,
        verbs=_CREATE_ONLY,
        virtual=True,
    ),
)


class ResourceTable:
    """Lookups over a tuple of `ResourceType` rows (the default is `RESOURCES`)."""

    def __init__(self, rows: tuple[ResourceType, ...] = RESOURCES) -> None:
        self.rows = rows
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        self._by_kind: dict[tuple[str, str], ResourceType] = {}
        for r in rows:
            key = (r.group, r.version, r.plural)
            if key in self._by_path or (r.api_version, r.kind) in self._by_kind:
                raise ValueError(f"resource table: {r.qualified} {r.version} listed twice")
            self._by_path[key] = r
            self._by_kind[(r.api_version, r.kind)] = r

    def by_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((api_version, kind))

    def by_name(self, name: str) -> ResourceType | None:
        """A plural (``pods``), a qualified plural (``leases.coordination.k8s.io``) or a kind."""
        for r in self.rows:
            if name in (r.plural, r.qualified, r.kind):
                return r
        return None

    def group_versions(self) -> dict[str, list[str]]:
        """API groups (``""`` for core) → versions, in table order."""
        out: dict[str, list[str]] = {}
        for r in self.rows:
            versions = out.setdefault(r.group, [])
            if r.version not in versions:
                versions.append(r.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [r for r in self.rows if r.group == group and r.version == version]
