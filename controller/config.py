"""The controller's frozen configuration and the environment variable names of its flags.

Every flag of ``docs/CONTRACTS.md`` is also readable from the variable named here; the flag wins.
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
    config_dir: Path
    state_dir: Path
    node_tokens_dir: Path
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
    workload_cert_ttl_seconds: int = DEFAULT_WORKLOAD_CERT_TTL_SECONDS
    #: how often the config dir and the node tokens dir are polled for changes
    poll_interval_seconds: float = 0.25
    #: how long a graceful drain may take before connections are cut
    drain_timeout_seconds: float = 5.0
    log_level: str = "INFO"
