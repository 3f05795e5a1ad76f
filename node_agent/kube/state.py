"""The node agent's view of its node on Kubernetes: which pods run here, which are enrolled, and
where their network namespaces are. Pure: no ``kubernetes`` import, no I/O.

Inputs: the pods scheduled on this node and every namespace's labels (both from watches, as
decoded JSON), the network namespaces the CNI plugin reported (at pod creation, before the
kubelet even knows the pod's IP) and those found by scanning ``/proc`` (pods that predate the
agent). Output: :attr:`NodePods.workloads`, the :class:`~node_agent.reconcile.WorkloadSource`
the reconciler works from.

Invariants:

* A pod is a workload only if it is scheduled on this node, is not host-network, has not
  finished (phase Succeeded/Failed), has an IP (``status.podIP``, or the one the CNI plugin
  reported) and a valid identity. Invalid pods are listed in :attr:`NodePods.problems` with the
  field at fault, never raised.
* A netns reported by the CNI plugin wins over one found by scanning ``/proc``; a CNI entry is
  dropped on CNI DEL (for the same sandbox) and when the pod leaves the node.
* The enrollment rule is :func:`meshapi.enrollment.is_enrolled`, the controller's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

from meshapi.constants import ENROLLMENT_ENABLED, ENROLLMENT_LABEL
from meshapi.enrollment import is_enrolled
from meshapi.errors import IdentityError
from meshapi.ids import NodeName, PodUid, SpiffeId, is_dns_label, is_dns_subdomain
from meshapi.kubeobjects import NamespaceRaw, PodRaw
from meshapi.model import Workload
from node_agent.cni import fallback

log = logging.getLogger(__name__)

#: the agent writes this pod annotation: ``enabled`` once redirected, ``pending`` before
REDIRECTION_ANNOTATION = "nodemesh.io/redirection"


@dataclass(frozen=True, slots=True)
class CniPod:
    """What the CNI plugin told us at sandbox creation."""

    container_id: str
    netns: str
    ip: ipaddress.IPv4Address | None


class PodProblem(ValueError):
    """A pod object that cannot become a workload; the message names the field."""


def _labels(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PodProblem(f"{where}: expected a map of strings")
    return {str(k): str(v) for k, v in value.items()}


def pod_key(pod: PodRaw) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def pod_labels(pod: PodRaw) -> dict[str, str]:
    return _labels((pod.get("metadata") or {}).get("labels"), "metadata.labels")


def namespace_labels(ns: NamespaceRaw) -> dict[str, str]:
    return _labels((ns.get("metadata") or {}).get("labels"), "metadata.labels")


def pod_enrolled(pod: PodRaw, ns_labels: Mapping[str, str]) -> bool:
    """Enrollment as decided at pod creation (host-network pods never are)."""
    if (pod.get("spec") or {}).get("hostNetwork") is True:
        return False
    return is_enrolled(pod_labels(pod), ns_labels)


def workload_from_pod(
    pod: PodRaw,
    ns_labels: Mapping[str, str],
    node: str,
    trust_domain: str,
    cni: CniPod | None,
    scanned_netns: str | None,
) -> Workload | None:
    """The workload for a pod of this node, None if it is not one (yet), PodProblem if the
    object is invalid."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if not isinstance(name, str) or not is_dns_subdomain(name):
        raise PodProblem(f"metadata.name: {name!r} is not a valid pod name")
    if not isinstance(namespace, str) or not is_dns_label(namespace):
        raise PodProblem(f"metadata.namespace: {namespace!r} is not a valid namespace")
    if not isinstance(uid, str) or not uid:
        raise PodProblem("metadata.uid: missing")
    if spec.get("nodeName") != node or spec.get("hostNetwork") is True:
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ip: ipaddress.IPv4Address | None = None
    raw_ip = status.get("podIP")
    if raw_ip:
        try:
            ip = ipaddress.IPv4Address(str(raw_ip))
        except ValueError:
            raise PodProblem(f"status.podIP: {raw_ip!r} is not an IPv4 address") from None
    elif cni is not None:
        ip = cni.ip
    if ip is None:
        return None
    sa = spec.get("serviceAccountName") or "default"
    try:
        identity = SpiffeId(trust_domain, namespace, str(sa))
    except IdentityError as exc:
        raise PodProblem(f"spec.serviceAccountName: {exc}") from exc
    labels = pod_labels(pod)
    return Workload(
        uid=PodUid(uid),
        name=name,
        namespace=namespace,
        service_account=str(sa),
        identity=identity,
        node=NodeName(node),
        ip=ip,
        enrolled=pod_enrolled(pod, ns_labels),
        labels=tuple(sorted(labels.items())),
        netns=cni.netns if cni is not None else scanned_netns,
    )


class NodePods:
    """Implements :class:`node_agent.reconcile.WorkloadSource` from Kubernetes watches."""

    def __init__(self, node: str, trust_domain: str, on_change: Callable[[], None]) -> None:
        self.node = node
        self.trust_domain = trust_domain
        self._on_change = on_change
        self._pods: dict[tuple[str, str], PodRaw] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._unreadable_namespaces: set[str] = set()
        self._cni: dict[str, CniPod] = {}
        self._scanned: dict[str, str] = {}
        self._seen: set[str] = set()
        self._workloads: Mapping[str, Workload] = MappingProxyType({})
        self.problems: dict[str, str] = {}
        self.pods_synced = False
        self.namespaces_synced = False
        self.scanned_once = False
        self._synced = asyncio.Event()

    # ---- inputs ---------------------------------------------------------------------------

    def set_pods(self, pods: Mapping[tuple[str, str], object]) -> None:
        self._pods = {k: cast(PodRaw, v) for k, v in pods.items()}
        uids = {str((p.get("metadata") or {}).get("uid", "")) for p in self._pods.values()}
        # a CNI entry goes when its pod leaves the node; one whose pod the watch has not shown
        # yet (the CNI call can come first) stays
        for uid in (set(self._cni) & self._seen) - uids:
            del self._cni[uid]
        for uid in set(self._scanned) - uids:
            del self._scanned[uid]
        self._seen = uids
        self.pods_synced = True
        self._recompute()

    def set_namespaces(self, namespaces: Mapping[tuple[str, str], object]) -> None:
        labels: dict[str, dict[str, str]] = {}
        unreadable: set[str] = set()
        for (_, name), raw in namespaces.items():
            try:
                labels[name] = namespace_labels(cast(NamespaceRaw, raw))
            except PodProblem as exc:
                log.warning("namespace %s: %s", name, exc)
                labels[name] = {}
                unreadable.add(name)
        self._namespaces = labels
        self._unreadable_namespaces = unreadable
        self.namespaces_synced = True
        self._recompute()

    def cni_added(self, uid: str, pod: CniPod) -> None:
        """The CNI plugin created this pod's sandbox (possibly before our watch saw the pod)."""
        self._cni[uid] = pod
        self._recompute()

    def cni_deleted(self, uid: str | None, container_id: str) -> None:
        """CNI DEL: the sandbox (not necessarily the pod) is gone."""
        for key, entry in list(self._cni.items()):
            if entry.container_id == container_id or key == uid:
                del self._cni[key]
        self._recompute()

    def set_scanned(self, netns: Mapping[str, str]) -> None:
        """Netns found by scanning /proc (merged: a later scan may find more)."""
        self._scanned.update(netns)
        self.scanned_once = True
        self._recompute()

    def missing_netns(self) -> dict[str, ipaddress.IPv4Address | None]:
        """Enrolled pods of this node whose netns is unknown: pod UID -> IP (what a /proc scan
        should look for)."""
        out: dict[str, ipaddress.IPv4Address | None] = {}
        for pod in self._pods.values():
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid", ""))
            if not uid or uid in self._cni or uid in self._scanned:
                continue
            if (pod.get("spec") or {}).get("nodeName") != self.node:
                continue
            try:
                enrolled = pod_enrolled(pod, self._namespaces.get(pod_key(pod)[0], {}))
            except PodProblem:
                continue
            if not enrolled:
                continue
            raw_ip = (pod.get("status") or {}).get("podIP")
            try:
                out[uid] = ipaddress.IPv4Address(str(raw_ip)) if raw_ip else None
            except ValueError:
                out[uid] = None
        return out

    # ---- queries --------------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> PodRaw | None:
        return self._pods.get((namespace, name))

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return self._namespaces.get(namespace)

    def fallback_namespaces(self) -> list[str] | None:
        """The namespaces whose new pods may start while the agent is down
        (:func:`node_agent.cni.fallback.passthrough_namespaces`); None until both watches have
        synced (an incomplete view must not let an enrolled namespace through)."""
        if not (self.pods_synced and self.namespaces_synced):
            return None
        pods: list[tuple[str, Mapping[str, str]]] = []
        for (namespace, _), pod in self._pods.items():
            try:
                pods.append((namespace, pod_labels(pod)))
            except PodProblem:
                # labels we cannot read might opt the pod in: keep its namespace off the list
                pods.append((namespace, {ENROLLMENT_LABEL: ENROLLMENT_ENABLED}))
        known = {
            name: labels for name, labels in self._namespaces.items()
            if name not in self._unreadable_namespaces
        }
        return fallback.passthrough_namespaces(known, pods)

    @property
    def workloads(self) -> Mapping[str, Workload]:
        return self._workloads

    @property
    def synced(self) -> bool:
        return self.pods_synced and self.namespaces_synced and self.scanned_once

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def _recompute(self) -> None:
        out: dict[str, Workload] = {}
        problems: dict[str, str] = {}
        for key, pod in sorted(self._pods.items()):
            uid = str((pod.get("metadata") or {}).get("uid", ""))
            try:
                w = workload_from_pod(
                    pod,
                    self._namespaces.get(key[0], {}),
                    self.node,
                    self.trust_domain,
                    self._cni.get(uid),
                    self._scanned.get(uid),
                )
            except PodProblem as exc:
                problems[f"{key[0]}/{key[1]}"] = str(exc)
                continue
            if w is not None:
                out[w.key] = w
        for name in sorted(set(problems) - set(self.problems)):
            log.warning("pod %s cannot be meshed: %s", name, problems[name])
        self.problems = problems
        changed = out != dict(self._workloads)
        self._workloads = MappingProxyType(out)
        if self.synced:
            self._synced.set()
        if changed:
            self._on_change()


def annotation_changes(
    pods: Mapping[tuple[str, str], PodRaw],
    workloads: Mapping[str, Workload],
    redirected: Callable[[str], bool],
) -> list[tuple[str, str, str | None]]:
    """(namespace, name, value) for every pod whose ``nodemesh.io/redirection`` annotation
    differs from what it should be: ``enabled`` (redirected), ``pending`` (enrolled, not yet)
    or absent (None: not enrolled)."""
    out: list[tuple[str, str, str | None]] = []
    for key, pod in sorted(pods.items()):
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        w = workloads.get(uid)
        want: str | None = None
        if w is not None and w.enrolled:
            want = "enabled" if redirected(uid) else "pending"
        annotations = meta.get("annotations") or {}
        have = annotations.get(REDIRECTION_ANNOTATION) if isinstance(annotations, dict) else None
        if have != want:
            out.append((key[0], key[1], want))
    return out
