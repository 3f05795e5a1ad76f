"""Where the local cluster keeps its files (docs/CONTRACTS.md, "Local cluster layout"). Pure.

``<state>/cluster.json``, ``<state>/config/`` (the controller's watched dir),
``<state>/controller/`` (its ``--state-dir``, ``node-tokens/``, log, pid file),
``<state>/nodes/<node>/`` (``token``, ``root-cert.pem``, ``ztunnel.sock``,
``agent-metrics.sock``, logs, pid files),
``<state>/pods/<namespace>.<name>.{log,pid}`` (the sample apps).

Only the entries named here are ever removed by ``down``; log files are kept for post-mortems.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshctl.local.topology import Node, Pod

DEFAULT_STATE_DIR: Final = "/var/lib/nodemesh/local"
STATE_DIR_ENV: Final = "NODEMESH_STATE_DIR"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path

    @property
    def cluster_json(self) -> Path:
        return self.root / "cluster.json"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def controller_dir(self) -> Path:
        return self.root / "controller"

    @property
    def node_tokens_dir(self) -> Path:
        return self.controller_dir / "node-tokens"

    @property
    def controller_root_cert(self) -> Path:
        return self.controller_dir / "ca" / "root-cert.pem"

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    def node_dir(self, node: Node) -> Path:
        return self.nodes_dir / node.name

    def token_file(self, node: Node) -> Path:
        return self.node_dir(node) / "token"

    def root_cert(self, node: Node) -> Path:
        return self.node_dir(node) / "root-cert.pem"

    def zds_socket(self, node: Node) -> Path:
        return self.node_dir(node) / "ztunnel.sock"

    def agent_metrics_socket(self, node: Node) -> Path:
        """The agent serves its metrics here; the node's ztunnel appends them to its own."""
        return self.node_dir(node) / "agent-metrics.sock"

    def agent_status(self, node: Node) -> Path:
        return self.node_dir(node) / "agent-status.json"

    def pod_log(self, pod: Pod) -> Path:
        return self.pods_dir / f"{pod.namespace}.{pod.name}.log"

    def pod_pid(self, pod: Pod) -> Path:
        return self.pods_dir / f"{pod.namespace}.{pod.name}.pid"

    def runtime_entries(self) -> tuple[Path, ...]:
        """Everything ``down`` may delete (non-log files inside, and then empty dirs)."""
        return (
            self.cluster_json,
            self.config_dir,
            self.controller_dir,
            self.nodes_dir,
            self.pods_dir,
        )
