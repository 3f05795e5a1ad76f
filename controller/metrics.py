"""The controller's Prometheus metrics, on a registry of its own (never the global default one),
so a test can build several controllers in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

#: label values of ``nodemesh_controller_csr_refused_total{reason}``
CSR_REFUSAL_REASONS = (
    "malformed",
    "signature",
    "key_type",
    "san",
    "trust_domain",
    "too_large",
    "forbidden",
    "unauthenticated",
)

#: label values of ``nodemesh_controller_token_reviews_total{outcome}``
TOKEN_REVIEW_OUTCOMES = (
    "ok",
    "cached",
    "shared",
    "error",
    "missing",
    "malformed",
    "unauthenticated",
    "wrong_audience",
    "wrong_service_account",
    "not_pod_bound",
    "unknown_pod",
    "uid_mismatch",
    "unscheduled",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.csr_signed = Counter(
            "nodemesh_controller_csr_signed", "Workload certificates signed.", registry=r
        )
        self.csr_refused = Counter(
            "nodemesh_controller_csr_refused", "CSRs refused, by reason.", ["reason"], registry=r
        )
        for reason in CSR_REFUSAL_REASONS:
            self.csr_refused.labels(reason)
        self.discovery_subscribers = Gauge(
            "nodemesh_controller_discovery_subscribers",
            "Connected discovery streams.",
            registry=r,
        )
        self.discovery_disconnects = Counter(
            "nodemesh_controller_discovery_slow_disconnects",
            "Discovery subscribers cut because they fell behind.",
            registry=r,
        )
        self.config_version = Gauge(
            "nodemesh_controller_config_version", "Current discovery version.", registry=r
        )
        self.config_errors = Gauge(
            "nodemesh_controller_config_errors", "Current configuration errors.", registry=r
        )
        self.config_rejections = Counter(
            "nodemesh_controller_config_rejections",
            "Configuration objects or files rejected (counted once per new error).",
            registry=r,
        )
        self.auth_failures = Counter(
            "nodemesh_controller_auth_failures",
            "Requests with a missing or bad node token.",
            registry=r,
        )

        self.token_reviews = Counter(
            "nodemesh_controller_token_reviews",
            "Node token checks in Kubernetes mode, by outcome (ok, cached, shared: waited for "
            "the same token's review in flight, error: the API failed, or why the token was "
            "refused).",
            ["outcome"],
            registry=r,
        )
        for outcome in TOKEN_REVIEW_OUTCOMES:
            self.token_reviews.labels(outcome)
        self.watch_restarts = Counter(
            "nodemesh_controller_watch_restarts",
            "Kubernetes watches that ended and were started again, by resource.",
            ["resource"],
            registry=r,
        )
        self.watch_relists = Counter(
            "nodemesh_controller_watch_relists",
            "Full lists of a Kubernetes resource (the first one included), by resource.",
            ["resource"],
            registry=r,
        )
        self.watch_errors = Counter(
            "nodemesh_controller_watch_errors",
            "Failed Kubernetes list or watch requests and malformed events, by resource.",
            ["resource"],
            registry=r,
        )
        self.watch_events = Counter(
            "nodemesh_controller_watch_events",
            "Kubernetes watch events received, by resource.",
            ["resource"],
            registry=r,
        )
        self.translations = Counter(
            "nodemesh_controller_translations",
            "Translations of the Kubernetes configuration into the mesh model.",
            registry=r,
        )
        self.leader = Gauge(
            "nodemesh_controller_leader",
            "1 while this replica holds the leader Lease (single-writer work), else 0.",
            registry=r,
        )
        self.leader_transitions = Counter(
            "nodemesh_controller_leader_transitions",
            "Times this replica gained or lost the leader Lease.",
            registry=r,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
