"""The ztunnel's Prometheus metrics: ONE registry for the process (STYLE.md 7).

Connection metrics use Istio's standard names and labels so existing dashboards work unchanged;
everything nodemesh-specific is ``nodemesh_ztunnel_*``. ``reporter`` is ``source`` for outbound
connections (reported by the source pod's ztunnel) and ``destination`` for inbound ones.

Byte counters follow Istio: ``istio_tcp_received_bytes_total`` counts bytes from the client to
the server ("request"), ``istio_tcp_sent_bytes_total`` bytes from the server to the client
("response"). They are added when the connection closes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshapi.model import Workload

log = logging.getLogger("ztunnel.metrics")

ISTIO_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "connection_security_policy",
    "response_flags",
)


@dataclass(frozen=True, slots=True)
class ConnLabels:
    reporter: str
    source_workload: str = "unknown"
    source_workload_namespace: str = "unknown"
    source_principal: str = "unknown"
    destination_workload: str = "unknown"
    destination_workload_namespace: str = "unknown"
    destination_principal: str = "unknown"
    destination_service: str = "unknown"
    connection_security_policy: str = "unknown"
    response_flags: str = "-"

    def values(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in ISTIO_LABELS)


def workload_name(w: Workload) -> str:
    """Istio's ``*_workload``: the ``app`` label when set (pods of one deployment), else the pod."""
    labels = w.label_map
    return labels.get("app") or labels.get("app.kubernetes.io/name") or w.name


def source_labels(w: Workload | None) -> dict[str, str]:
    if w is None:
        return {}
    return {
        "source_workload": workload_name(w),
        "source_workload_namespace": w.namespace,
        "source_principal": str(w.identity),
    }


def destination_labels(w: Workload | None) -> dict[str, str]:
    if w is None:
        return {}
    return {
        "destination_workload": workload_name(w),
        "destination_workload_namespace": w.namespace,
        "destination_principal": str(w.identity),
    }


class Metrics:
    """Every metric the ztunnel exports, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tcp_opened = Counter(
            "istio_tcp_connections_opened", "TCP connections opened", ISTIO_LABELS, registry=r
        )
        self.tcp_closed = Counter(
            "istio_tcp_connections_closed", "TCP connections closed", ISTIO_LABELS, registry=r
        )
        self.tcp_sent = Counter(
            "istio_tcp_sent_bytes", "Bytes sent by the server (response)", ISTIO_LABELS, registry=r
        )
        self.tcp_received = Counter(
            "istio_tcp_received_bytes",
            "Bytes received from the client (request)",
            ISTIO_LABELS,
            registry=r,
        )
        self.refused = Counter(
            "nodemesh_ztunnel_refused_connections",
            "Connections refused by the ztunnel, by direction and reason",
            ("direction", "reason"),
            registry=r,
        )
        self.hbone_refusals = Counter(
            "nodemesh_ztunnel_hbone_refusals",
            "HBONE connections or streams refused by the HBONE server",
            ("reason",),
            registry=r,
        )
        self.zds_errors = Counter(
            "nodemesh_ztunnel_zds_errors",
            "Invalid or failed messages from the node agent",
            ("reason",),
            registry=r,
        )
        self.discovery_reconnects = Counter(
            "nodemesh_ztunnel_discovery_reconnects",
            "Reconnections of the discovery stream, by reason",
            ("reason",),
            registry=r,
        )
        self.discovery_messages = Counter(
            "nodemesh_ztunnel_discovery_messages",
            "Discovery messages applied, by type",
            ("type",),
            registry=r,
        )
        self.rejected = Counter(
            "nodemesh_ztunnel_rejected",
            "Malformed or over-limit input rejected by a parser facing the network (HTTP/1.1 "
            "inside a tunnel or on 15006, HBONE on 15008), by reason",
            ("reason",),
            registry=r,
        )
        self.loop_lag = Gauge(
            "nodemesh_ztunnel_event_loop_lag_seconds",
            "How late the event loop ran the watchdog's last tick (a callback holding the loop "
            "shows here)",
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "nodemesh_ztunnel_event_loop_lag_max_seconds",
            "The largest event-loop lag seen since the ztunnel started",
            registry=r,
        )
        self.loop_stalls = Counter(
            "nodemesh_ztunnel_event_loop_stalls",
            "Ticks of the watchdog that came more than the stall threshold (100 ms) late",
            registry=r,
        )
        self.pods_served = Gauge(
            "nodemesh_ztunnel_pods_served", "Pods this ztunnel serves", registry=r
        )
        self.discovery_connected = Gauge(
            "nodemesh_ztunnel_discovery_connected",
            "1 while the discovery stream is connected",
            registry=r,
        )
        # the node agent's own metrics are appended to /metrics (ztunnel.agentmetrics)
        self.agent_scrape_up = Gauge(
            "nodemesh_agent_scrape_up",
            "1 if the node agent's metrics were read for this scrape (they follow), 0 if not "
            "(agent down, slow or its answer unusable; see "
            "nodemesh_ztunnel_agent_scrape_errors_total) or not configured",
            registry=r,
        )
        self.agent_scrape_errors = Counter(
            "nodemesh_ztunnel_agent_scrape_errors",
            "Scrapes that left out the node agent's metrics, by reason",
            ("reason",),
            registry=r,
        )

    def connection_opened(self, labels: ConnLabels) -> None:
        self.tcp_opened.labels(*labels.values()).inc()

    def connection_closed(
        self, labels: ConnLabels, client_to_server: int, server_to_client: int
    ) -> None:
        values = labels.values()
        self.tcp_closed.labels(*values).inc()
        self.tcp_received.labels(*values).inc(client_to_server)
        self.tcp_sent.labels(*values).inc(server_to_client)

    def refuse(self, direction: str, reason: str) -> None:
        self.refused.labels(direction, reason).inc()

    def reject(self, reason: str) -> None:
        """One input rejected by a network-facing parser; ``reason`` is from a fixed set."""
        self.rejected.labels(reason).inc()


class HboneEvents:
    """``HboneServerEvents`` for the HBONE server: each refusal is counted and logged."""

    def __init__(self, metrics: Metrics, pod: str) -> None:
        self._metrics = metrics
        self._pod = pod

    def refused(
        self, reason: str, peer: object, *, identity: object = None, detail: str = ""
    ) -> None:
        self._metrics.hbone_refusals.labels(reason).inc()
        self._metrics.reject(f"hbone_{reason}")
        log.warning("HBONE refused for pod %s from %s (%s): %s%s", self._pod, peer,
                    identity or "identity unknown", reason, f": {detail}" if detail else "")
