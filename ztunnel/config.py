"""The ztunnel's configuration: one frozen :class:`Config`, built by ``cli.py`` from flags and the
environment (flag wins). Environment variable names live here and only here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshapi.constants import (
    DEFAULT_AGENT_METRICS_SOCKET,
    DEFAULT_TRUST_DOMAIN,
    NODE_METRICS_PORT,
    NODE_READINESS_PORT,
    ZTUNNEL_ADMIN_PORT,
)
from ztunnel.errors import ConfigError

ENV_NODE: Final = "NODEMESH_NODE"
ENV_CONTROLLER: Final = "NODEMESH_CONTROLLER"
ENV_CA_ROOT: Final = "NODEMESH_CA_ROOT"
ENV_TOKEN_FILE: Final = "NODEMESH_TOKEN_FILE"  # noqa: S105 (a variable name, not a secret)
ENV_ZDS_SOCKET: Final = "NODEMESH_ZDS_SOCKET"
ENV_ADMIN: Final = "NODEMESH_ZTUNNEL_ADMIN"
ENV_METRICS: Final = "NODEMESH_ZTUNNEL_METRICS"
ENV_READINESS: Final = "NODEMESH_ZTUNNEL_READINESS"
ENV_TRUST_DOMAIN: Final = "NODEMESH_TRUST_DOMAIN"
ENV_LOG_LEVEL: Final = "NODEMESH_LOG_LEVEL"
#: the same variable sets the agent's --metrics-socket (node_agent/config.py)
ENV_AGENT_METRICS_SOCKET: Final = "NODEMESH_AGENT_METRICS_SOCKET"

DEFAULT_ADMIN: Final = f"127.0.0.1:{ZTUNNEL_ADMIN_PORT}"
DEFAULT_METRICS: Final = f"0.0.0.0:{NODE_METRICS_PORT}"
DEFAULT_READINESS: Final = f"0.0.0.0:{NODE_READINESS_PORT}"


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port_str = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT")
    try:
        port = int(port_str)
    except ValueError as exc:
        raise ConfigError(f"{what}: port {port_str!r} is not a number") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range")
    return host.strip("[]"), port


@dataclass(frozen=True, slots=True)
class Config:
    node: str
    controller: str
    ca_root: Path
    token_file: Path
    zds_socket: Path
    admin: tuple[str, int] = ("127.0.0.1", ZTUNNEL_ADMIN_PORT)
    metrics: tuple[str, int] = ("0.0.0.0", NODE_METRICS_PORT)
    readiness: tuple[str, int] = ("0.0.0.0", NODE_READINESS_PORT)
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    log_level: str = "INFO"
    #: the node agent's metrics socket, read on each scrape of /metrics (None: not at all)
    agent_metrics_socket: Path | None = Path(DEFAULT_AGENT_METRICS_SOCKET)
    agent_metrics_timeout: float = 1.0
    connect_timeout: float = 5.0
    drain_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.node:
            raise ConfigError("--node is required (this node's name)")
        parse_hostport(self.controller, "--controller")
