"""``nodemesh-controller`` / ``python -m controller``: flags (or environment, flag wins) into a
frozen :class:`Config`, then :func:`controller.app.run`. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller import app
from controller import config as c
from controller.errors import StartupError
from meshapi.errors import IdentityError
from meshapi.ids import SpiffeId, is_dns_label


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodemesh-controller", description="nodemesh controller: CA, config, discovery"
    )

    def opt(flag: str, var: str, help_: str, default: str | None = None) -> None:
        value = env.get(var, default)
        p.add_argument(flag, default=value, required=value is None, help=f"{help_} (env {var})")

    opt("--config-dir", c.ENV_CONFIG_DIR, "watched directory of Kubernetes-shaped YAML")
    opt("--state-dir", c.ENV_STATE_DIR, "CA in DIR/ca/, API certificate in DIR/tls/")
    p.add_argument(
        "--ca-cert",
        default=env.get(c.ENV_CA_CERT),
        help=f"operator-supplied CA certificate (env {c.ENV_CA_CERT})",
    )
    p.add_argument(
        "--ca-key", default=env.get(c.ENV_CA_KEY), help=f"its private key (env {c.ENV_CA_KEY})"
    )
    p.add_argument(
        "--ca-chain",
        default=env.get(c.ENV_CA_CHAIN),
        help=f"issuers of an intermediate --ca-cert up to the root (env {c.ENV_CA_CHAIN})",
    )
    opt(
        "--node-tokens-dir",
        c.ENV_NODE_TOKENS_DIR,
        "one file per node: name = node, content = bootstrap token",
    )
    opt("--listen", c.ENV_LISTEN, "API (TLS) HOST:PORT", c.DEFAULT_LISTEN)
    opt(
        "--metrics-listen",
        c.ENV_METRICS_LISTEN,
        "metrics/health HOST:PORT",
        c.DEFAULT_METRICS_LISTEN,
    )
    env_sans = [s.strip() for s in env.get(c.ENV_API_SAN, "").split(",") if s.strip()]
    p.add_argument(
        "--api-san",
        action="append",
        default=None,
        help=f"IP or DNS name in the API certificate, repeatable (env "
        f"{c.ENV_API_SAN}, comma-separated; default localhost,127.0.0.1)",
    )
    p.set_defaults(env_sans=env_sans)
    opt("--trust-domain", c.ENV_TRUST_DOMAIN, "SPIFFE trust domain", "cluster.local")
    opt(
        "--workload-cert-ttl",
        c.ENV_WORKLOAD_CERT_TTL,
        "workload certificate lifetime, seconds",
        str(86400),
    )
    opt(
        "--root-namespace",
        c.ENV_ROOT_NAMESPACE,
        "namespace whose policies apply mesh-wide",
        "nodemesh-system",
    )
    opt("--log-level", c.ENV_LOG_LEVEL, "DEBUG, INFO, WARNING", "INFO")
    return p


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> c.Config:
    environ = os.environ if env is None else env
    parser = _parser(environ)
    ns = parser.parse_args(argv)
    try:
        listen = c.parse_host_port(ns.listen)
        metrics_listen = c.parse_host_port(ns.metrics_listen)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        ttl = int(ns.workload_cert_ttl)
    except ValueError:
        parser.error(f"--workload-cert-ttl {ns.workload_cert_ttl!r} is not a number of seconds")
    if ttl < 10:
        parser.error("--workload-cert-ttl must be at least 10 seconds")
    try:
        SpiffeId(ns.trust_domain, "default", "default")
    except IdentityError as exc:
        parser.error(f"--trust-domain: {exc}")
    if not is_dns_label(ns.root_namespace):
        parser.error(f"--root-namespace: {ns.root_namespace!r} is not a namespace name")
    if (ns.ca_cert is None) != (ns.ca_key is None):
        parser.error("--ca-cert and --ca-key go together")
    if ns.ca_chain is not None and ns.ca_cert is None:
        parser.error("--ca-chain needs --ca-cert and --ca-key")
    return c.Config(
        config_dir=Path(ns.config_dir),
        state_dir=Path(ns.state_dir),
        node_tokens_dir=Path(ns.node_tokens_dir),
        listen=listen,
        metrics_listen=metrics_listen,
        ca_cert=Path(ns.ca_cert) if ns.ca_cert else None,
        ca_key=Path(ns.ca_key) if ns.ca_key else None,
        ca_chain=Path(ns.ca_chain) if ns.ca_chain else None,
        api_sans=tuple(ns.api_san if ns.api_san else ns.env_sans),
        trust_domain=ns.trust_domain,
        root_namespace=ns.root_namespace,
        workload_cert_ttl_seconds=ttl,
        log_level=str(ns.log_level).upper(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, config.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return app.run(config)
    except StartupError as exc:
        logging.getLogger("controller").error("event=startup_failed error=%r", str(exc))
        print(f"nodemesh-controller: {exc}", file=sys.stderr)
        return 1
