"""``nodemesh-agent`` / ``python -m node_agent``: flags (or environment) → Config → app.run."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from meshapi.constants import DEFAULT_AGENT_METRICS_SOCKET
from meshapi.errors import IdentityError
from meshapi.ids import SpiffeId
from node_agent import config as c
from node_agent.cni import fallback
from node_agent.errors import ConfigError


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodemesh-agent",
        description="nodemesh node agent: redirects enrolled pods' traffic into the ztunnel",
    )

    def add(flag: str, var: str, help: str, default: str | None = None) -> None:
        p.add_argument(flag, default=env.get(var, default), help=f"{help} (env {var})")

    add("--node", c.ENV_NODE, "this node's name")
    add("--controller", c.ENV_CONTROLLER, "controller API HOST:PORT")
    add("--ca-root", c.ENV_CA_ROOT, "trust anchor for the controller API")
    add("--token-file", c.ENV_TOKEN_FILE, "node bootstrap credential")
    add("--zds-socket", c.ENV_ZDS_SOCKET, "agent-ztunnel Unix socket (the ztunnel listens)")
    add("--redirect-mode", c.ENV_REDIRECT_MODE, "auto | ebpf | iptables", "auto")
    add("--cgroup", c.ENV_CGROUP,
        "eBPF mode: cgroup v2 directory holding this node's pods and ztunnel (default: the root)")
    add("--bpf-dir", c.ENV_BPF_DIR, "eBPF mode: directory of the BPF C programs (default: bpf/)")
    add("--bpf-pin-root", c.ENV_BPF_PIN_ROOT,
        "eBPF mode: pins go under DIR/<node>/ (default /sys/fs/bpf/nodemesh)")
    p.add_argument(
        "--ebpf-sockmap",
        action=argparse.BooleanOptionalAction,
        default=env.get(c.ENV_EBPF_SOCKMAP, "").lower() in ("1", "true", "yes"),
        help="eBPF mode: the in-pod hop between an app and its ztunnel skips TCP/IP "
        "(sockmap/sk_msg; experimental, default off: no flow control, a bulk sender can fail "
        f"with ENOMEM; env {c.ENV_EBPF_SOCKMAP}=1)",
    )
    add("--host-probe-ip", c.ENV_HOST_PROBE_IP,
        "source IP of the kubelet's health probes, exempt from inbound capture; auto: the "
        "node's source address on its route to the pods")
    add("--status-file", c.ENV_STATUS_FILE, "write per-pod redirection state here as JSON")
    add("--metrics-socket", c.ENV_METRICS_SOCKET,
        "serve Prometheus GET /metrics on this Unix socket (the ztunnel appends them to the "
        "node's metrics endpoint); '' turns it off", DEFAULT_AGENT_METRICS_SOCKET)
    add("--log-level", c.ENV_LOG_LEVEL, "DEBUG, INFO, WARNING, ERROR", "INFO")
    add("--source", c.ENV_SOURCE,
        "where this node's pods come from: controller (local mode) | kubernetes", "controller")
    k = p.add_argument_group("--source kubernetes")

    def kadd(flag: str, var: str, help: str, default: str | None = None) -> None:
        k.add_argument(flag, default=env.get(var, default), help=f"{help} (env {var})")

    kadd("--kubeconfig", c.ENV_KUBECONFIG,
         "kubeconfig file (default: the in-cluster service account, else $KUBECONFIG)")
    kadd("--trust-domain", c.ENV_TRUST_DOMAIN, "SPIFFE trust domain", "cluster.local")
    kadd("--cni-socket", c.ENV_CNI_SOCKET, "Unix socket the CNI plugin calls",
         "/var/run/nodemesh/cni.sock")
    kadd("--cni-bin-dir", c.ENV_CNI_BIN_DIR, "install the CNI plugin binary here")
    kadd("--cni-conf-dir", c.ENV_CNI_CONF_DIR,
         "add the plugin to the primary CNI config list here")
    kadd("--cni-plugin", c.ENV_CNI_PLUGIN, "the CNI plugin binary to install")
    kadd("--cni-fallback-file", c.ENV_CNI_FALLBACK_FILE,
         "keep here the namespaces whose new pods the CNI plugin lets start while this agent "
         "is unreachable (default: cni-fallback next to --cni-socket; the plugin reads "
         f"{fallback.DEFAULT_PATH}); '' turns it off: then no new pod starts on the node "
         "while the agent is down")
    kadd("--proc-root", c.ENV_PROC_ROOT, "the host's /proc", "/proc")
    kadd("--pod-name", c.ENV_POD_NAME, "this agent's pod (downward API)")
    kadd("--pod-namespace", c.ENV_POD_NAMESPACE, "this agent's namespace (downward API)")
    return p


def parse(argv: Sequence[str], env: Mapping[str, str]) -> c.Config:
    ns = build_parser(env).parse_args(argv)
    if ns.source not in c.SOURCES:
        raise ConfigError(f"--source {ns.source!r} is not one of {', '.join(c.SOURCES)}")
    required: tuple[str, ...] = ("node", "zds_socket")
    if ns.source == "controller":
        required += ("controller", "ca_root", "token_file")
    missing = [f"--{name.replace('_', '-')}" for name in required if not getattr(ns, name)]
    if missing:
        raise ConfigError(f"missing required flag(s): {', '.join(missing)}")
    kube = _kube(ns) if ns.source == "kubernetes" else None
    if ns.redirect_mode not in c.REDIRECT_MODES:
        raise ConfigError(
            f"--redirect-mode {ns.redirect_mode!r} is not supported; use one of "
            f"{', '.join(c.REDIRECT_MODES)}"
        )
    probe: ipaddress.IPv4Address | None = None
    auto_probe = ns.host_probe_ip == "auto"
    if ns.host_probe_ip and not auto_probe:
        try:
            probe = ipaddress.IPv4Address(ns.host_probe_ip)
        except ValueError as exc:
            raise ConfigError(
                f"--host-probe-ip {ns.host_probe_ip!r} is not an IPv4 address"
            ) from exc
    level = str(ns.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {ns.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return c.Config(
        node=ns.node,
        controller=ns.controller or None,
        ca_root=Path(ns.ca_root) if ns.ca_root else None,
        token_file=Path(ns.token_file) if ns.token_file else None,
        zds_socket=Path(ns.zds_socket),
        redirect_mode=ns.redirect_mode,
        host_probe_ip=probe,
        host_probe_auto=auto_probe,
        status_file=Path(ns.status_file) if ns.status_file else None,
        metrics_socket=Path(ns.metrics_socket) if ns.metrics_socket else None,
        log_level=level,
        cgroup=Path(ns.cgroup) if ns.cgroup else None,
        bpf_dir=Path(ns.bpf_dir) if ns.bpf_dir else None,
        bpf_pin_root=Path(ns.bpf_pin_root) if ns.bpf_pin_root else None,
        ebpf_sockmap=bool(ns.ebpf_sockmap),
        source=ns.source,
        kube=kube,
    )


def _kube(ns: argparse.Namespace) -> c.KubeConfig:
    try:
        SpiffeId(ns.trust_domain, "default", "default")
    except IdentityError as exc:
        raise ConfigError(f"--trust-domain {ns.trust_domain!r}: {exc}") from exc
    cni = [ns.cni_bin_dir, ns.cni_conf_dir, ns.cni_plugin]
    if any(cni) and not all(cni):
        raise ConfigError("--cni-bin-dir, --cni-conf-dir and --cni-plugin go together")
    if ns.cni_plugin and not os.access(ns.cni_plugin, os.X_OK):
        raise ConfigError(f"--cni-plugin {ns.cni_plugin}: not an executable file")
    if bool(ns.pod_name) != bool(ns.pod_namespace):
        raise ConfigError("--pod-name and --pod-namespace go together")
    fallback_file: Path | None = Path(ns.cni_socket).parent / fallback.FILE_NAME
    if ns.cni_fallback_file is not None:
        fallback_file = Path(ns.cni_fallback_file) if ns.cni_fallback_file else None
    if fallback_file is not None and not fallback_file.is_absolute():
        raise ConfigError(
            f"--cni-fallback-file {ns.cni_fallback_file}: not an absolute path (the plugin, "
            "run by the container runtime, reads it from the host)"
        )
    return c.KubeConfig(
        kubeconfig=Path(ns.kubeconfig) if ns.kubeconfig else None,
        trust_domain=ns.trust_domain,
        cni_socket=Path(ns.cni_socket),
        cni_bin_dir=Path(ns.cni_bin_dir) if ns.cni_bin_dir else None,
        cni_conf_dir=Path(ns.cni_conf_dir) if ns.cni_conf_dir else None,
        cni_plugin=Path(ns.cni_plugin) if ns.cni_plugin else None,
        proc_root=Path(ns.proc_root),
        pod_name=ns.pod_name or None,
        pod_namespace=ns.pod_namespace or None,
        cni_fallback_file=fallback_file,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"nodemesh-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from node_agent import app  # after logging is set up

    return app.run(config)
