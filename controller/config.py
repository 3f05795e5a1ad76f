"""The controller's frozen configuration and the environment variable names of its flags.

Every flag of ``docs/CONTRACTS.md`` is also readable from the variable named here; the flag wins.
``source`` selects the mode: ``local`` (config dir, node token files, CA in the state dir) or
``kubernetes`` (list/watch the API, TokenReview, CA in a Secret, single-writer work under a
Lease); the fields that only one mode uses say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from meshapi.constants import (
    CONTROLLER_API_PORT,
    CONTROLLER_METRICS_PORT,
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    DEFAULT_WORKLOAD_CERT_TTL_SECONDS,
)
from meshapi.httppath import DEFAULT_PATH_NORMALIZATION, PathNormalization

ENV_CONFIG_DIR: Final = "NODEMESH_CONTROLLER_CONFIG_DIR"
ENV_STATE_DIR: Final = "NODEMESH_CONTROLLER_STATE_DIR"
ENV_CA_CERT: Final = "NODEMESH_CONTROLLER_CA_CERT"
ENV_CA_KEY: Final = "NODEMESH_CONTROLLER_CA_KEY"
ENV_CA_CHAIN: Final = "NODEMESH_CONTROLLER_CA_CHAIN"
ENV_NODE_TOKENS_DIR: Final = "NODEMESH_CONTROLLER_NODE_TOKENS_DIR"
ENV_LISTEN: Final = "NODEMESH_CONTROLLER_LISTEN"
ENV_METRICS_LISTEN: Final = "NODEMESH_CONTROLLER_METRICS_LISTEN"
#: comma-separated list (the flag repeats instead)
ENV_API_SAN: Final = "NODEMESH_CONTROLLER_API_SAN"
ENV_TRUST_DOMAIN: Final = "NODEMESH_CONTROLLER_TRUST_DOMAIN"
ENV_WORKLOAD_CERT_TTL: Final = "NODEMESH_CONTROLLER_WORKLOAD_CERT_TTL"
ENV_LOG_LEVEL: Final = "NODEMESH_CONTROLLER_LOG_LEVEL"
ENV_ROOT_NAMESPACE: Final = "NODEMESH_CONTROLLER_ROOT_NAMESPACE"
ENV_PATH_NORMALIZATION: Final = "NODEMESH_CONTROLLER_PATH_NORMALIZATION"
ENV_SOURCE: Final = "NODEMESH_CONTROLLER_SOURCE"
ENV_KUBECONFIG: Final = "NODEMESH_CONTROLLER_KUBECONFIG"
#: set by the Deployment from the downward API (metadata.namespace / metadata.name)
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
ENV_POD_NAME: Final = "POD_NAME"
ENV_CA_SECRET: Final = "NODEMESH_CONTROLLER_CA_SECRET"  # noqa: S105 - a variable name
ENV_CA_ROOT_CONFIGMAP: Final = "NODEMESH_CONTROLLER_CA_ROOT_CONFIGMAP"
ENV_LEADER_LEASE: Final = "NODEMESH_CONTROLLER_LEADER_LEASE"
ENV_TOKEN_AUDIENCE: Final = "NODEMESH_CONTROLLER_TOKEN_AUDIENCE"  # noqa: S105 - a variable name
ENV_NODE_SERVICE_ACCOUNT: Final = "NODEMESH_CONTROLLER_NODE_SERVICE_ACCOUNT"

SOURCE_LOCAL: Final = "local"
SOURCE_KUBERNETES: Final = "kubernetes"
SOURCES: Final = (SOURCE_LOCAL, SOURCE_KUBERNETES)
DEFAULT_NAMESPACE: Final = "nodemesh-system"
DEFAULT_CA_SECRET: Final = "nodemesh-ca"  # noqa: S105 - a Secret name
DEFAULT_CA_ROOT_CONFIGMAP: Final = "nodemesh-ca-root"
DEFAULT_LEADER_LEASE: Final = "nodemesh-controller"
DEFAULT_TOKEN_AUDIENCE: Final = "nodemesh"  # noqa: S105 - an audience
DEFAULT_NODE_SERVICE_ACCOUNT: Final = "nodemesh-system:nodemesh-node"
#: the Service in front of the controller: its names go into the API certificate by default
CONTROLLER_SERVICE: Final = "nodemesh-controller"

DEFAULT_LISTEN: Final = f"0.0.0.0:{CONTROLLER_API_PORT}"
DEFAULT_METRICS_LISTEN: Final = f"0.0.0.0:{CONTROLLER_METRICS_PORT}"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str) -> HostPort:
    """``HOST:PORT`` or ``[v6]:PORT``; raises ValueError with a readable message."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_s)
    except ValueError as exc:
        raise ValueError(f"{value!r}: port {port_s!r} is not a number") from exc
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range")
    return HostPort(host, port)


@dataclass(frozen=True, slots=True)
class Config:
    #: local mode: required; kubernetes mode: unused
    config_dir: Path | None = None
    #: local mode: required (CA and API certificate); kubernetes mode: optional, API certificate
    state_dir: Path | None = None
    #: local mode: required; kubernetes mode: unused (TokenReview)
    node_tokens_dir: Path | None = None
    listen: HostPort = field(default_factory=lambda: parse_host_port(DEFAULT_LISTEN))
    metrics_listen: HostPort = field(
        default_factory=lambda: parse_host_port(DEFAULT_METRICS_LISTEN)
    )
    ca_cert: Path | None = None
    ca_key: Path | None = None
    ca_chain: Path | None = None
    api_sans: tuple[str, ...] = ()
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    #: policies in this namespace apply mesh-wide (sent to nodes in every snapshot)
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    #: how L7 policy normalizes request paths, mesh-wide (sent to nodes in every snapshot)
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION
    workload_cert_ttl_seconds: int = DEFAULT_WORKLOAD_CERT_TTL_SECONDS
    #: how often the config dir and the node tokens dir are polled for changes
    poll_interval_seconds: float = 0.25
    #: how long a graceful drain may take before connections are cut
    drain_timeout_seconds: float = 5.0
    log_level: str = "INFO"
    source: str = SOURCE_LOCAL
    # ---- kubernetes mode ----
    #: None: in-cluster service account, else $KUBECONFIG / ~/.kube/config
    kubeconfig: Path | None = None
    #: the controller's own namespace (Lease, CA Secret, root ConfigMap)
    namespace: str = DEFAULT_NAMESPACE
    #: this replica's pod name: the Lease holder identity
    pod_name: str = ""
    ca_secret: str = DEFAULT_CA_SECRET
    ca_root_configmap: str = DEFAULT_CA_ROOT_CONFIGMAP
    leader_lease: str = DEFAULT_LEADER_LEASE
    token_audience: str = DEFAULT_TOKEN_AUDIENCE
    #: NAMESPACE:NAME of the node DaemonSet's service account
    node_service_account: str = DEFAULT_NODE_SERVICE_ACCOUNT
    lease_duration_seconds: float = 15.0
    lease_renew_seconds: float = 5.0
    #: watch requests end after this long and are resumed (bounds how long a stop takes)
    watch_timeout_seconds: int = 5
    #: how long a follower waits at start for the leader to create the CA Secret
    ca_wait_seconds: float = 120.0
    #: how often the leader checks that the root ConfigMap still holds the root certificate
    ca_root_resync_seconds: float = 30.0
