"""``nodemesh-ztunnel``: flags (docs/CONTRACTS.md) and environment → :class:`Config` → app."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshapi.constants import DEFAULT_AGENT_METRICS_SOCKET
from ztunnel import config as c
from ztunnel.errors import ConfigError


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodemesh-ztunnel",
        description="nodemesh node proxy: per-pod listeners, HBONE, metrics, admin.",
    )
    p.add_argument("--node", default=_env(c.ENV_NODE), help=f"this node's name [{c.ENV_NODE}]")
    p.add_argument("--controller", default=_env(c.ENV_CONTROLLER),
                   help=f"controller API HOST:PORT [{c.ENV_CONTROLLER}]")
    p.add_argument("--ca-root", default=_env(c.ENV_CA_ROOT),
                   help=f"mesh root certificate (controller API and peers) [{c.ENV_CA_ROOT}]")
    p.add_argument("--token-file", default=_env(c.ENV_TOKEN_FILE),
                   help=f"node bootstrap credential [{c.ENV_TOKEN_FILE}]")
    p.add_argument("--zds-socket", default=_env(c.ENV_ZDS_SOCKET),
                   help=f"agent<->ztunnel Unix socket, the ztunnel listens [{c.ENV_ZDS_SOCKET}]")
    p.add_argument("--admin", default=_env(c.ENV_ADMIN, c.DEFAULT_ADMIN),
                   help=f"admin endpoint HOST:PORT [{c.ENV_ADMIN}]")
    p.add_argument("--metrics", default=_env(c.ENV_METRICS, c.DEFAULT_METRICS),
                   help=f"Prometheus /metrics HOST:PORT [{c.ENV_METRICS}]")
    p.add_argument("--readiness", default=_env(c.ENV_READINESS, c.DEFAULT_READINESS),
                   help=f"/healthz/ready HOST:PORT [{c.ENV_READINESS}]")
    p.add_argument("--agent-metrics-socket",
                   default=os.environ.get(c.ENV_AGENT_METRICS_SOCKET, DEFAULT_AGENT_METRICS_SOCKET),
                   help="the node agent's metrics Unix socket, appended to /metrics; '' turns "
                   f"it off [{c.ENV_AGENT_METRICS_SOCKET}]")
    p.add_argument("--trust-domain", default=_env(c.ENV_TRUST_DOMAIN, "cluster.local"),
                   help=f"mesh trust domain [{c.ENV_TRUST_DOMAIN}]")
    p.add_argument("--log-level", default=_env(c.ENV_LOG_LEVEL, "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=f"[{c.ENV_LOG_LEVEL}]")
    return p


def parse_config(argv: Sequence[str] | None = None) -> c.Config:
    parser = build_parser()
    ns = parser.parse_args(argv)
    missing = [flag for flag, value in (
        ("--node", ns.node), ("--controller", ns.controller), ("--ca-root", ns.ca_root),
        ("--token-file", ns.token_file), ("--zds-socket", ns.zds_socket),
    ) if not value]
    if missing:
        parser.error(f"missing required flag(s): {', '.join(missing)} "
                     "(each can also come from its environment variable, see --help)")
    try:
        return c.Config(
            node=ns.node,
            controller=ns.controller,
            ca_root=Path(ns.ca_root),
            token_file=Path(ns.token_file),
            zds_socket=Path(ns.zds_socket),
            admin=c.parse_hostport(ns.admin, "--admin"),
            metrics=c.parse_hostport(ns.metrics, "--metrics"),
            readiness=c.parse_hostport(ns.readiness, "--readiness"),
            agent_metrics_socket=(
                Path(ns.agent_metrics_socket) if ns.agent_metrics_socket else None
            ),
            trust_domain=ns.trust_domain,
            log_level=ns.log_level,
        )
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    from ztunnel import app

    sys.exit(app.run(config))
