"""The seam between the cluster builder and the processes it runs.

:class:`Components` says what to run for the controller, each node's ztunnel and agent, and each
pod, and whether ``up`` should wait for the mesh to become ready. :class:`MeshComponents` runs
the real ``python -m controller|ztunnel|node_agent`` with the flags of docs/CONTRACTS.md;
tests substitute stand-ins (e.g. ``sleep``) to exercise the network and process handling alone.
"""

from __future__ import annotations

import sys
from typing import Protocol

from meshctl.local.cgroups import cgroup2_mount, subtree
from meshctl.local.layout import Layout
from meshctl.local.topology import CONTROLLER_API, CONTROLLER_METRICS, HOST_BRIDGE_IP, Node, Pod


class Components(Protocol):
    #: wait for controller /readyz, ztunnel readiness and pod redirection after starting
    wait_for_mesh: bool

    def controller(self, layout: Layout) -> list[str]: ...

    def ztunnel(self, layout: Layout, node: Node) -> list[str]: ...

    def agent(self, layout: Layout, node: Node) -> list[str]: ...

    def pod(self, pod: Pod) -> list[str]: ...


def sample_app(pod: Pod) -> list[str]:
    base = [sys.executable, "-m", "meshctl.sampleapp"]
    if pod.app_port is None:
        return [*base, "--pause"]
    return [*base, "--port", str(pod.app_port), "--name", pod.name, "--namespace", pod.namespace]


class MeshComponents:
    wait_for_mesh = True

    def __init__(
        self,
        python: str = sys.executable,
        workload_cert_ttl: int | None = None,
        redirect_mode: str = "auto",
        ebpf_sockmap: bool = False,
    ) -> None:
        self.python = python
        self.workload_cert_ttl = workload_cert_ttl
        self.redirect_mode = redirect_mode
        self.ebpf_sockmap = ebpf_sockmap

    def controller(self, layout: Layout) -> list[str]:
        return [
            self.python, "-m", "controller",
            "--config-dir", str(layout.config_dir),
            "--state-dir", str(layout.controller_dir),
            "--node-tokens-dir", str(layout.node_tokens_dir),
            "--listen", CONTROLLER_API,
            "--metrics-listen", CONTROLLER_METRICS,
            "--api-san", str(HOST_BRIDGE_IP),
            *(["--workload-cert-ttl", str(self.workload_cert_ttl)]
              if self.workload_cert_ttl is not None else []),
        ]

    def _node_flags(self, layout: Layout, node: Node) -> list[str]:
        return [
            "--node", node.name,
            "--controller", CONTROLLER_API,
            "--ca-root", str(layout.root_cert(node)),
            "--token-file", str(layout.token_file(node)),
            "--zds-socket", str(layout.zds_socket(node)),
        ]

    def ztunnel(self, layout: Layout, node: Node) -> list[str]:
        return [
            self.python, "-m", "ztunnel", *self._node_flags(layout, node),
            "--metrics", node.metrics,
            "--readiness", node.readiness,
            # the agent's metrics, appended to the node's endpoint
            "--agent-metrics-socket", str(layout.agent_metrics_socket(node)),
        ]

    def agent(self, layout: Layout, node: Node) -> list[str]:
        return [
            self.python, "-m", "node_agent", *self._node_flags(layout, node),
            "--redirect-mode", self.redirect_mode,
            *(["--ebpf-sockmap"] if self.ebpf_sockmap else []),
            # eBPF mode: the subtree holding every pod and the ztunnel (docs/CONTRACTS.md)
            "--cgroup", str(subtree(cgroup2_mount())),
            "--host-probe-ip", str(node.pod_gateway),
            "--status-file", str(layout.agent_status(node)),
            "--metrics-socket", str(layout.agent_metrics_socket(node)),
        ]

    def pod(self, pod: Pod) -> list[str]:
        return sample_app(pod)
