"""Policy enforcement at the destination ztunnel: the edge around the pure
:func:`meshapi.policy.evaluate` (issue 4).

* :meth:`PolicyEngine.check` decides one inbound connection (HBONE stream or plaintext on
  15006) or one HTTP request, counts the decision (``nodemesh_ztunnel_policy_decisions_total``
  by action and policy, AUDIT and dry-run included) and logs denials, audits and dry-run results.
* :meth:`PolicyEngine.mtls_mode` resolves PeerAuthentication for a pod port.
* Inbound connections are tracked with their attributes; when the discovery view changes
  (policies, workloads, services) each one is evaluated again and closed if now denied, so a
  new policy reaches established L4 connections within one discovery round trip. A plain
  (L4) connection to a port where L7 rules now apply is closed too: its requests could not be
  decided one by one.

Invariants: the view is read at decision time (never cached across a change); a tracked
connection is removed when its splice ends (``untrack``), so the table is bounded by the live
connections.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter

from meshapi.discovery import Change
from meshapi.httppath import PathNormalization
from meshapi.model import Workload
from meshapi.policy import (
    Attributes,
    Decision,
    MtlsMode,
    evaluate,
    is_http_port,
    resolve_mtls,
)
from ztunnel.l7 import Authorize, L7Metrics
from ztunnel.seams import MeshView

log = logging.getLogger("ztunnel.policy")


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "nodemesh_ztunnel_policy_decisions",
            "Authorization decisions at the destination: result is allow, deny, audit, "
            "dry_run_allow or dry_run_deny; policy is namespace/name or '-' (default)",
            ("result", "policy", "stage"),
            registry=registry,
        )
        self.closed = Counter(
            "nodemesh_ztunnel_policy_closed_connections",
            "Established connections closed because a policy change denies them",
            registry=registry,
        )


@dataclass(eq=False, slots=True)
class Tracked:
    workload: Workload
    attributes: Attributes
    close: Callable[[str], None]
    #: requests on it are decided one by one (ztunnel.l7); else it is a plain byte splice
    l7: bool = False


class PolicyEngine:
    def __init__(
        self,
        view: MeshView,
        registry: CollectorRegistry,
        l7: bool = False,
    ) -> None:
        self._view = view
        #: whether this ztunnel parses HTTP on HTTP ports; without it every port is L4 and
        #: L7 rules fail closed (ALLOW never matches, DENY denies on its L4 part)
        self._l7 = l7
        self.metrics = PolicyMetrics(registry)
        self.l7_metrics = L7Metrics(registry)
        self._tracked: dict[object, Tracked] = {}
        view.on_change(self._changed)

    # -- decisions ---------------------------------------------------------------------------

    def is_http_port(self, workload: Workload, port: int) -> bool:
        if not self._l7:
            return False
        return is_http_port(self._view.state.services.values(), workload.uid, port)

    def workload_by_ip(self, ip: ipaddress.IPv4Address) -> Workload | None:
        return self._view.index.by_ip.get(ip)

    def mtls_mode(self, workload: Workload, port: int) -> MtlsMode:
        return resolve_mtls(
            self._view.state.peer_authentications.values(),
            namespace=workload.namespace,
            labels=workload.label_map,
            port=port,
            root_namespace=self._view.state.root_namespace,
        )

    def check(self, workload: Workload, attributes: Attributes, stage: str) -> Decision:
        """Decide and record. ``stage`` is ``connection`` or ``request`` (a metric label)."""
        decision = evaluate(
            self._view.state.authorization_policies.values(),
            namespace=workload.namespace,
            labels=workload.label_map,
            attributes=attributes,
            root_namespace=self._view.state.root_namespace,
        )
        self.record(workload, attributes, decision, stage)
        return decision

    @property
    def l7(self) -> bool:
        return self._l7

    @property
    def path_normalization(self) -> PathNormalization:
        """The mesh-wide path normalization of the last snapshot (read per request)."""
        return self._view.state.path_normalization

    def request_authorizer(self, workload: Workload) -> Authorize:
        """For :class:`ztunnel.l7.L7Splice`: decide each request against the current policies."""

        def authorize(attributes: Attributes) -> tuple[bool, str]:
            current = self._view.state.workloads.get(workload.key, workload)
            decision = self.check(current, attributes, "request")
            return decision.allowed, decision.reason

        return authorize

    def record(
        self, workload: Workload, attributes: Attributes, decision: Decision, stage: str
    ) -> None:
        m = self.metrics.decisions
        policy = decision.deciding.policy if decision.deciding is not None else "-"
        m.labels("allow" if decision.allowed else "deny", policy, stage).inc()
        peer = attributes.principal or "-"
        where = f"{workload.namespace}/{workload.name}:{attributes.destination_port}"
        if not decision.allowed:
            log.warning("event=policy_denied pod=%s peer=%s src=%s stage=%s reason=%r",
                        where, peer, attributes.source_ip, stage, decision.reason)
        for audit in decision.audits:
            m.labels("audit", audit.policy, stage).inc()
            log.info("event=policy_audit pod=%s peer=%s src=%s stage=%s match=%r",
                     where, peer, attributes.source_ip, stage, str(audit))
        if decision.dry_run is not None:
            dry = decision.dry_run
            result = "dry_run_allow" if dry.allowed else "dry_run_deny"
            for name in dry.policies:
                m.labels(result, name, stage).inc()
            log.info("event=policy_dry_run pod=%s peer=%s src=%s stage=%s would=%s "
                     "deciding=%r policies=%s", where, peer, attributes.source_ip, stage,
                     "allow" if dry.allowed else "deny",
                     str(dry.deciding) if dry.deciding else "-", ",".join(dry.policies))
        for warning in decision.warnings:
            log.debug("event=policy_warning pod=%s %s", where, warning)

    # -- established connections -------------------------------------------------------------

    def track(self, key: object, workload: Workload, attributes: Attributes,
              close: Callable[[str], None], *, l7: bool = False) -> None:
        self._tracked[key] = Tracked(workload, attributes, close, l7)

    def untrack(self, key: object) -> None:
        self._tracked.pop(key, None)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    def _changed(self, change: Change) -> None:
        if not (change.policies or change.full or change.workloads or change.services):
            return
        self.reevaluate()

    def reevaluate(self) -> int:
        """Close every tracked connection the current policies deny; returns how many."""
        closed = 0
        for key, t in list(self._tracked.items()):
            workload = self._view.state.workloads.get(t.workload.key, t.workload)
            decision = evaluate(
                self._view.state.authorization_policies.values(),
                namespace=workload.namespace,
                labels=workload.label_map,
                attributes=t.attributes,
                root_namespace=self._view.state.root_namespace,
            )
            if decision.allowed and (t.l7 or not decision.needs_request):
                continue
            if decision.allowed:
                # L7 rules now apply to a connection relayed as plain bytes: close it, the
                # client's next connection is decided request by request
                decision = replace(decision, allowed=False,
                                   reason="L7 rules now apply to this port; reconnect")
            self._tracked.pop(key, None)
            self.metrics.closed.inc()
            self.record(workload, t.attributes, decision, "established")
            log.warning("event=policy_closed_connection pod=%s/%s src=%s reason=%r",
                        workload.namespace, workload.name, t.attributes.source_ip,
                        decision.reason)
            t.close(f"policy: {decision.reason}")
            closed += 1
        return closed
