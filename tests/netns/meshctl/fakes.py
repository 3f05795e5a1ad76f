"""Stand-in components for the root tests: the real network, cgroups and sample apps, with
``sleep`` in place of the controller, ztunnel and agent (the controller stand-in writes a fake
root certificate unless ``hang`` is set, so ``up`` exercises its wait-and-copy path)."""

from __future__ import annotations

from meshctl.local.components import sample_app
from meshctl.local.layout import Layout
from meshctl.local.topology import Node, Pod


class SleepComponents:
    wait_for_mesh = False

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang

    def controller(self, layout: Layout) -> list[str]:
        if self.hang:
            return ["sleep", "infinity"]
        ca = layout.controller_root_cert
        return ["sh", "-c", f"mkdir -p '{ca.parent}' && echo fake > '{ca}' && exec sleep infinity"]

    def ztunnel(self, layout: Layout, node: Node) -> list[str]:
        return ["sleep", "infinity"]

    def agent(self, layout: Layout, node: Node) -> list[str]:
        return ["sleep", "infinity"]

    def pod(self, pod: Pod) -> list[str]:
        return sample_app(pod)
