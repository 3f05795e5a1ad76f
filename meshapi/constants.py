"""Ports, marks, labels and defaults shared by every component (see DESIGN.md, "Ports, marks and
names"). The values follow Istio ambient on purpose."""

from __future__ import annotations

from typing import Final

OUTBOUND_CAPTURE_PORT: Final = 15001
INBOUND_PLAINTEXT_PORT: Final = 15006
INBOUND_HBONE_PORT: Final = 15008
ZTUNNEL_ADMIN_PORT: Final = 15000
NODE_METRICS_PORT: Final = 15020
NODE_READINESS_PORT: Final = 15021
CONTROLLER_API_PORT: Final = 15012
CONTROLLER_METRICS_PORT: Final = 15014

#: Every socket the ztunnel opens inside a pod netns carries this mark; redirection exempts it.
ZTUNNEL_SOCKET_MARK: Final = 0x539

ENROLLMENT_LABEL: Final = "nodemesh.io/dataplane-mode"
ENROLLMENT_ENABLED: Final = "enabled"
ENROLLMENT_OPT_OUT: Final = "none"

#: Local mode only: the path of a pod's network namespace file, written by the local cluster
#: builder into the Pod's annotations. On Kubernetes the node agent finds netns by itself.
LOCAL_NETNS_ANNOTATION: Final = "local.nodemesh.io/netns"

#: The node agent serves its Prometheus metrics on this Unix socket (it opens no port); the
#: ztunnel appends them to the node's metrics endpoint (NODE_METRICS_PORT). Next to the ZDS and
#: CNI sockets, in the directory both DaemonSet containers share.
DEFAULT_AGENT_METRICS_SOCKET: Final = "/var/run/nodemesh/agent-metrics.sock"

DEFAULT_TRUST_DOMAIN: Final = "cluster.local"
DEFAULT_ROOT_NAMESPACE: Final = "nodemesh-system"
DEFAULT_WORKLOAD_CERT_TTL_SECONDS: Final = 24 * 3600

HBONE_ALPN: Final = "h2"
