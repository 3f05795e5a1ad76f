"""The agent's frozen configuration and the environment variables that can set each flag."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ENV_NODE: Final = "NODEMESH_NODE"
ENV_CONTROLLER: Final = "NODEMESH_CONTROLLER"
ENV_CA_ROOT: Final = "NODEMESH_CA_ROOT"
ENV_TOKEN_FILE: Final = "NODEMESH_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret
ENV_ZDS_SOCKET: Final = "NODEMESH_ZDS_SOCKET"
ENV_REDIRECT_MODE: Final = "NODEMESH_REDIRECT_MODE"
ENV_HOST_PROBE_IP: Final = "NODEMESH_HOST_PROBE_IP"
ENV_STATUS_FILE: Final = "NODEMESH_AGENT_STATUS_FILE"
ENV_LOG_LEVEL: Final = "NODEMESH_LOG_LEVEL"
ENV_CGROUP: Final = "NODEMESH_CGROUP"
ENV_BPF_DIR: Final = "NODEMESH_BPF_DIR"
ENV_BPF_PIN_ROOT: Final = "NODEMESH_BPF_PIN_ROOT"
ENV_EBPF_SOCKMAP: Final = "NODEMESH_EBPF_SOCKMAP"

REDIRECT_MODES: Final = ("auto", "ebpf", "iptables")


@dataclass(frozen=True, slots=True)
class Config:
    node: str
    controller: str
    ca_root: Path
    token_file: Path
    zds_socket: Path
    redirect_mode: str = "auto"
    host_probe_ip: ipaddress.IPv4Address | None = None
    status_file: Path | None = None
    log_level: str = "INFO"
    #: eBPF mode: the cgroup v2 directory holding this node's pods and ztunnel (None: the root)
    cgroup: Path | None = None
    #: eBPF mode: the program sources (None: the ``bpf/`` next to the package)
    bpf_dir: Path | None = None
    #: eBPF mode: pins go to ``<bpf_pin_root>/<node>/`` (None: /sys/fs/bpf/nodemesh)
    bpf_pin_root: Path | None = None
    #: eBPF mode: the in-pod app <-> ztunnel hop skips TCP/IP (sockmap + sk_msg)
    ebpf_sockmap: bool = False
