"""The node agent's Prometheus metrics and the Unix socket that serves them.

The agent opens no port: :class:`MetricsServer` answers ``GET /metrics`` on a Unix socket
(``--metrics-socket``) and the ztunnel appends what it reads there to the node's one metrics
endpoint (15020). docs/CONTRACTS.md lists every metric.

Invariants:

* ONE registry per process (STYLE.md 7), of its own, never prometheus_client's global one, so
  tests can build several agents in one process.
* Every name starts with ``nodemesh_agent_`` (the ztunnel refuses anything else when it merges,
  so the two never export the same family); ``nodemesh_agent_scrape_up`` is the ztunnel's own.
* Label values are bounded: fixed sets below, the node name and the redirect mode. No pod name,
  namespace or UID is ever a label (the status file and ``/config_dump`` have those).
* Served in the classic text format (``CONTENT_TYPE_LATEST``), as the ztunnel serves its own:
  the concatenation of the two is one valid exposition.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from node_agent import unixsock
from node_agent.errors import AgentError

log = logging.getLogger(__name__)

PREFIX = "nodemesh_agent_"

#: ``PodStatus.status`` values (node_agent.reconcile), the label values of ``nodemesh_agent_pods``
POD_STATES = ("pending", "redirected", "error", "removed")
#: what the CNI plugin relays; anything else is counted as ``unknown`` (always ``invalid``)
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS")
CNI_RESULTS = ("ok", "failed", "invalid")
#: the agent's Kubernetes watches (node_agent.kube.runtime)
WATCH_RESOURCES = ("pods", "namespaces")
REDIRECT_OPERATIONS = ("apply", "remove")
#: a CNI ADD returns in milliseconds for a pod outside the mesh, in tens of milliseconds once a
#: pod is redirected, and fails after 30 s (the plugin gives up at 60 s)
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


def cni_command_label(command: str | None) -> str:
    return command if command in CNI_COMMANDS else "unknown"


class _PodStates(Collector):
    """``nodemesh_agent_pods{state}``, read from the agent's pod table at scrape time (on the
    event loop, where the table lives), every state present (0 when no pod is in it)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[str]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}pods",
            "Enrolled pods of this node known to the agent, by redirection state (pending: not "
            "yet redirected; redirected: rules in place and served by the ztunnel; error: the "
            "last attempt failed, retried; removed: no longer enrolled, redirection taken out).",
            labels=("state",),
        )
        counts = collections.Counter(self.source() if self.source is not None else ())
        for state in POD_STATES:
            family.add_metric((state,), counts.get(state, 0))
        yield family


class AgentMetrics:
    """Every metric the node agent exports, registered in :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge(
            f"{PREFIX}info",
            "1, labelled with this agent's node, redirect mode (iptables or ebpf) and pod source "
            "(controller or kubernetes).",
            ("node", "mode", "source"),
            registry=r,
        )
        self.cni_requests = Counter(
            f"{PREFIX}cni_requests",
            "CNI plugin requests answered, by command and result (ok; failed: the pod could not "
            "be handled, e.g. redirection not in place in time; invalid: malformed request).",
            ("command", "result"),
            registry=r,
        )
        self.cni_duration = Histogram(
            f"{PREFIX}cni_request_duration_seconds",
            "Time from accepting a CNI plugin request to its answer, by command (an ADD of an "
            "enrolled pod returns once the pod is redirected).",
            ("command",),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.redirection_errors = Counter(
            f"{PREFIX}redirection_errors",
            "Failures to install (apply) or take out (remove) a pod's redirection, by mode.",
            ("mode", "operation"),
            registry=r,
        )
        self.enroll_duration = Histogram(
            f"{PREFIX}pod_enroll_duration_seconds",
            "Time from the start of a pod's redirection to the ztunnel's acknowledgement of its "
            "listeners.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.zds_connected = Gauge(
            f"{PREFIX}zds_connected",
            "1 while the agent is connected to the ztunnel (ZDS socket), else 0.",
            registry=r,
        )
        self.zds_disconnects = Counter(
            f"{PREFIX}zds_disconnects",
            "ZDS connections to the ztunnel that failed or were lost (the agent reconnects).",
            registry=r,
        )
        self.watch_relists = Counter(
            f"{PREFIX}watch_relists",
            "Full lists of a Kubernetes resource (the first one included), by resource.",
            ("resource",),
            registry=r,
        )
        self.watch_errors = Counter(
            f"{PREFIX}watch_errors",
            "Failed Kubernetes list or watch requests and malformed events, by resource.",
            ("resource",),
            registry=r,
        )
        self.annotation_errors = Counter(
            f"{PREFIX}annotation_errors",
            "Failed updates of a pod's nodemesh.io/redirection annotation (Kubernetes).",
            registry=r,
        )
        self._pods = _PodStates()
        r.register(self._pods)

    def set_info(self, node: str, mode: str, source: str) -> None:
        self.info.clear()
        self.info.labels(node, mode, source).set(1)

    def watch_pod_states(self, states: Callable[[], Iterable[str]]) -> None:
        """``states()`` returns the state of every pod the agent tracks (read at scrape time)."""
        self._pods.source = states

    def init_cni(self) -> None:
        """Create the CNI series at 0, so that rates work from the first request on."""
        for command in CNI_COMMANDS:
            self.cni_duration.labels(command)
            for result in CNI_RESULTS:
                self.cni_requests.labels(command, result)

    def init_watches(self) -> None:
        for resource in WATCH_RESOURCES:
            self.watch_relists.labels(resource)
            self.watch_errors.labels(resource)

    def cni_counts(self) -> Mapping[tuple[str, str], int]:
        """Non-zero ``cni_requests`` by (command, result)."""
        out: dict[tuple[str, str], int] = {}
        for family in self.cni_requests.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.value:
                    out[(s.labels["command"], s.labels["result"])] = int(s.value)
        return out

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class MetricsServer(unixsock.Served):
    """``GET /metrics`` of a registry on a Unix socket (mode 0600; a stale socket file is
    replaced, a live one is an error: see :mod:`node_agent.unixsock`).

    Use ``async with MetricsServer(path, metrics):`` or ``await server.serve(stop)``.
    """

    def __init__(self, path: str, metrics: AgentMetrics) -> None:
        self.path = path
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self._bound: unixsock.Bound | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        if self._runner is not None:
            raise AgentError(f"metrics server at {self.path} already started")
        sock: socket.socket
        sock, self._bound = unixsock.bind(self.path, "--metrics-socket", tmp_prefix="metrics")

        async def handle(_: web.Request) -> web.Response:
            return web.Response(
                body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            self._unlink()
            raise
        self._runner = runner
        self.ready.set()
        log.info("serving metrics on %s", self.path)

    async def close(self) -> None:
        self.ready.clear()
        self._unlink()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _unlink(self) -> None:
        unixsock.unlink_if_ours(self.path, self._bound)
        self._bound = None
