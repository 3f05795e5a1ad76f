"""The agent's frozen configuration and the environment variables that can set each flag."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshapi.constants import DEFAULT_AGENT_METRICS_SOCKET

ENV_NODE: Final = "NODEMESH_NODE"
ENV_CONTROLLER: Final = "NODEMESH_CONTROLLER"
ENV_CA_ROOT: Final = "NODEMESH_CA_ROOT"
ENV_TOKEN_FILE: Final = "NODEMESH_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret
ENV_ZDS_SOCKET: Final = "NODEMESH_ZDS_SOCKET"
ENV_REDIRECT_MODE: Final = "NODEMESH_REDIRECT_MODE"
ENV_HOST_PROBE_IP: Final = "NODEMESH_HOST_PROBE_IP"
ENV_STATUS_FILE: Final = "NODEMESH_AGENT_STATUS_FILE"
#: the same variable sets the ztunnel's --agent-metrics-socket (ztunnel/config.py)
ENV_METRICS_SOCKET: Final = "NODEMESH_AGENT_METRICS_SOCKET"
ENV_LOG_LEVEL: Final = "NODEMESH_LOG_LEVEL"
ENV_CGROUP: Final = "NODEMESH_CGROUP"
ENV_BPF_DIR: Final = "NODEMESH_BPF_DIR"
ENV_BPF_PIN_ROOT: Final = "NODEMESH_BPF_PIN_ROOT"
ENV_EBPF_SOCKMAP: Final = "NODEMESH_EBPF_SOCKMAP"
ENV_SOURCE: Final = "NODEMESH_AGENT_SOURCE"
ENV_KUBECONFIG: Final = "NODEMESH_KUBECONFIG"
ENV_TRUST_DOMAIN: Final = "NODEMESH_TRUST_DOMAIN"
ENV_CNI_SOCKET: Final = "NODEMESH_CNI_SOCKET"
ENV_CNI_BIN_DIR: Final = "NODEMESH_CNI_BIN_DIR"
ENV_CNI_CONF_DIR: Final = "NODEMESH_CNI_CONF_DIR"
ENV_CNI_PLUGIN: Final = "NODEMESH_CNI_PLUGIN"
ENV_CNI_FALLBACK_FILE: Final = "NODEMESH_CNI_FALLBACK_FILE"
ENV_PROC_ROOT: Final = "NODEMESH_PROC_ROOT"
#: set by the DaemonSet from the downward API: the agent's own pod (to detect an uninstall)
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"

SOURCES: Final = ("controller", "kubernetes")

REDIRECT_MODES: Final = ("auto", "ebpf", "iptables")


@dataclass(frozen=True, slots=True)
class Config:
    node: str
    #: the controller's API, its trust anchor and this node's credential (--source controller)
    controller: str | None
    ca_root: Path | None
    token_file: Path | None
    zds_socket: Path
    redirect_mode: str = "auto"
    host_probe_ip: ipaddress.IPv4Address | None = None
    #: ``--host-probe-ip auto``: the node's source address towards its pods (node_agent.hostroute)
    host_probe_auto: bool = False
    status_file: Path | None = None
    #: serve ``GET /metrics`` on this Unix socket (None: not at all)
    metrics_socket: Path | None = Path(DEFAULT_AGENT_METRICS_SOCKET)
    log_level: str = "INFO"
    #: eBPF mode: the cgroup v2 directory holding this node's pods and ztunnel (None: the root)
    cgroup: Path | None = None
    #: eBPF mode: the program sources (None: the ``bpf/`` next to the package)
    bpf_dir: Path | None = None
    #: eBPF mode: pins go to ``<bpf_pin_root>/<node>/`` (None: /sys/fs/bpf/nodemesh)
    bpf_pin_root: Path | None = None
    #: eBPF mode: the in-pod app <-> ztunnel hop skips TCP/IP (sockmap + sk_msg)
    ebpf_sockmap: bool = False
    #: where the node's pods come from: the controller's discovery stream (local mode) or the
    #: Kubernetes API (watches + the CNI plugin)
    source: str = "controller"
    kube: KubeConfig | None = None


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """``--source kubernetes`` only."""

    #: None: in-cluster service account (else $KUBECONFIG)
    kubeconfig: Path | None
    trust_domain: str
    #: the Unix socket the CNI plugin calls
    cni_socket: Path
    #: where the plugin binary and its config entry are installed (None: not installed by us)
    cni_bin_dir: Path | None
    cni_conf_dir: Path | None
    cni_plugin: Path | None
    #: the host's /proc (to find the netns of pods that predate the agent)
    proc_root: Path
    #: this agent's own pod, to tell an uninstall (DaemonSet deleted) from a restart
    pod_name: str | None
    pod_namespace: str | None
    #: the namespaces whose new pods the plugin lets start while this agent is unreachable
    #: (node_agent.cni.fallback); None: turned off (every ADD fails while the agent is down)
    cni_fallback_file: Path | None = None
