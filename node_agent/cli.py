"""``nodemesh-agent`` / ``python -m node_agent``: flags (or environment) → Config → app.run."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent import config as c
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
    add("--host-probe-ip", c.ENV_HOST_PROBE_IP, "source IP of health probes, not captured")
    add("--status-file", c.ENV_STATUS_FILE, "write per-pod redirection state here as JSON")
    add("--log-level", c.ENV_LOG_LEVEL, "DEBUG, INFO, WARNING, ERROR", "INFO")
    return p


def parse(argv: Sequence[str], env: Mapping[str, str]) -> c.Config:
    ns = build_parser(env).parse_args(argv)
    missing = [
        f"--{name.replace('_', '-')}"
        for name in ("node", "controller", "ca_root", "token_file", "zds_socket")
        if not getattr(ns, name)
    ]
    if missing:
        raise ConfigError(f"missing required flag(s): {', '.join(missing)}")
    if ns.redirect_mode not in c.REDIRECT_MODES:
        raise ConfigError(
            f"--redirect-mode {ns.redirect_mode!r} is not supported; use one of "
            f"{', '.join(c.REDIRECT_MODES)}"
        )
    probe: ipaddress.IPv4Address | None = None
    if ns.host_probe_ip:
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
        controller=ns.controller,
        ca_root=Path(ns.ca_root),
        token_file=Path(ns.token_file),
        zds_socket=Path(ns.zds_socket),
        redirect_mode=ns.redirect_mode,
        host_probe_ip=probe,
        status_file=Path(ns.status_file) if ns.status_file else None,
        log_level=level,
        cgroup=Path(ns.cgroup) if ns.cgroup else None,
        bpf_dir=Path(ns.bpf_dir) if ns.bpf_dir else None,
        bpf_pin_root=Path(ns.bpf_pin_root) if ns.bpf_pin_root else None,
        ebpf_sockmap=bool(ns.ebpf_sockmap),
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
