"""``nodemesh-controller`` / ``python -m controller``: flags (or environment, flag wins) into a
frozen :class:`Config`, then :func:`controller.app.run`. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller import app
from controller import config as c
from controller.auth import ServiceAccountRef
from controller.errors import StartupError
from meshapi.errors import IdentityError
from meshapi.httppath import DEFAULT_PATH_NORMALIZATION, PathNormalization, parse_mode
from meshapi.ids import SpiffeId, is_dns_label, is_dns_subdomain


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodemesh-controller", description="nodemesh controller: CA, config, discovery"
    )

    def opt(flag: str, var: str, help_: str, default: str | None = None) -> None:
        value = env.get(var, default)
        p.add_argument(flag, default=value, required=value is None, help=f"{help_} (env {var})")

    def optional(flag: str, var: str, help_: str) -> None:
        p.add_argument(flag, default=env.get(var) or None, help=f"{help_} (env {var})")

    opt(
        "--source",
        c.ENV_SOURCE,
        "where the configuration comes from: local (a directory) or kubernetes (the API)",
        c.SOURCE_LOCAL,
    )
    optional("--config-dir", c.ENV_CONFIG_DIR, "local: watched directory of Kubernetes-shaped YAML")
    optional(
        "--state-dir",
        c.ENV_STATE_DIR,
        "CA in DIR/ca/ (local), API certificate in DIR/tls/ (kubernetes: optional)",
    )
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
    optional(
        "--node-tokens-dir",
        c.ENV_NODE_TOKENS_DIR,
        "local: one file per node: name = node, content = bootstrap token",
    )
    optional(
        "--kubeconfig",
        c.ENV_KUBECONFIG,
        "kubernetes: kubeconfig file (default: in-cluster service account, else $KUBECONFIG)",
    )
    opt(
        "--namespace",
        c.ENV_POD_NAMESPACE,
        "kubernetes: the controller's own namespace (Lease, CA Secret, root ConfigMap)",
        c.DEFAULT_NAMESPACE,
    )
    optional(
        "--pod-name",
        c.ENV_POD_NAME,
        "kubernetes: this replica's pod name, the leader Lease holder identity (default: "
        "the host name, which is the pod name in a pod)",
    )
    opt("--ca-secret", c.ENV_CA_SECRET, "kubernetes: Secret holding the CA", c.DEFAULT_CA_SECRET)
    opt(
        "--ca-root-configmap",
        c.ENV_CA_ROOT_CONFIGMAP,
        "kubernetes: ConfigMap the root certificate is published in (key root-cert.pem)",
        c.DEFAULT_CA_ROOT_CONFIGMAP,
    )
    opt(
        "--leader-lease",
        c.ENV_LEADER_LEASE,
        "kubernetes: Lease for single-writer work",
        c.DEFAULT_LEADER_LEASE,
    )
    opt(
        "--token-audience",
        c.ENV_TOKEN_AUDIENCE,
        "kubernetes: audience of the nodes' projected service-account tokens",
        c.DEFAULT_TOKEN_AUDIENCE,
    )
    opt(
        "--node-service-account",
        c.ENV_NODE_SERVICE_ACCOUNT,
        "kubernetes: NAMESPACE:NAME of the node DaemonSet's service account",
        c.DEFAULT_NODE_SERVICE_ACCOUNT,
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
    opt(
        "--path-normalization",
        c.ENV_PATH_NORMALIZATION,
        "how L7 policy normalizes request paths, mesh-wide: "
        + ", ".join(m.value for m in PathNormalization),
        DEFAULT_PATH_NORMALIZATION.value,
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
    try:
        path_normalization = parse_mode(ns.path_normalization)
    except ValueError as exc:
        parser.error(f"--path-normalization: {exc}")
    if (ns.ca_cert is None) != (ns.ca_key is None):
        parser.error("--ca-cert and --ca-key go together")
    if ns.ca_chain is not None and ns.ca_cert is None:
        parser.error("--ca-chain needs --ca-cert and --ca-key")
    if ns.source not in c.SOURCES:
        parser.error(f"--source {ns.source!r}: expected one of {', '.join(c.SOURCES)}")
    pod_name = ns.pod_name or ""
    if ns.source == c.SOURCE_LOCAL:
        missing = [
            flag
            for flag, value in (
                ("--config-dir", ns.config_dir),
                ("--state-dir", ns.state_dir),
                ("--node-tokens-dir", ns.node_tokens_dir),
            )
            if not value
        ]
        if missing:
            parser.error(f"--source local needs {', '.join(missing)}")
        if ns.kubeconfig:
            parser.error("--kubeconfig is for --source kubernetes")
    else:
        for flag, value in (
            ("--config-dir", ns.config_dir),
            ("--node-tokens-dir", ns.node_tokens_dir),
        ):
            if value:
                parser.error(
                    f"{flag} is for --source local; with --source kubernetes the configuration "
                    "comes from the API and nodes authenticate by TokenReview"
                )
        pod_name = pod_name or socket.gethostname()
        if not is_dns_subdomain(pod_name):
            parser.error(f"--pod-name: {pod_name!r} is not a pod name")
        if not is_dns_label(ns.namespace):
            parser.error(f"--namespace: {ns.namespace!r} is not a namespace name")
        for flag, value in (
            ("--ca-secret", ns.ca_secret),
            ("--ca-root-configmap", ns.ca_root_configmap),
            ("--leader-lease", ns.leader_lease),
        ):
            if not is_dns_subdomain(value):
                parser.error(f"{flag}: {value!r} is not an object name (RFC 1123 subdomain)")
        if not ns.token_audience.strip():
            parser.error("--token-audience must not be empty")
        try:
            ServiceAccountRef.parse(ns.node_service_account)
        except ValueError as exc:
            parser.error(f"--node-service-account: {exc}")
    return c.Config(
        source=ns.source,
        config_dir=Path(ns.config_dir) if ns.config_dir else None,
        state_dir=Path(ns.state_dir) if ns.state_dir else None,
        node_tokens_dir=Path(ns.node_tokens_dir) if ns.node_tokens_dir else None,
        kubeconfig=Path(ns.kubeconfig) if ns.kubeconfig else None,
        namespace=ns.namespace,
        pod_name=pod_name,
        ca_secret=ns.ca_secret,
        ca_root_configmap=ns.ca_root_configmap,
        leader_lease=ns.leader_lease,
        token_audience=ns.token_audience,
        node_service_account=ns.node_service_account,
        listen=listen,
        metrics_listen=metrics_listen,
        ca_cert=Path(ns.ca_cert) if ns.ca_cert else None,
        ca_key=Path(ns.ca_key) if ns.ca_key else None,
        ca_chain=Path(ns.ca_chain) if ns.ca_chain else None,
        api_sans=tuple(ns.api_san if ns.api_san else ns.env_sans),
        trust_domain=ns.trust_domain,
        root_namespace=ns.root_namespace,
        path_normalization=path_normalization,
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
