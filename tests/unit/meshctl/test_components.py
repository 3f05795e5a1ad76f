"""The node agent's command line as `meshctl local up` builds it: the eBPF sockmap acceleration is
passed only when asked for."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from meshapi.ids import PodUid
from meshctl.local import components, topology
from meshctl.local.layout import Layout


@pytest.mark.parametrize("sockmap", [False, True])
def test_agent_gets_ebpf_sockmap_only_when_asked(
    sockmap: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = itertools.count(1)
    topo = topology.build(2, 0, lambda: PodUid(f"uid-{next(counter)}"))
    monkeypatch.setattr(components, "cgroup2_mount", lambda: Path("/sys/fs/cgroup"))
    mesh = components.MeshComponents(python="py", redirect_mode="ebpf", ebpf_sockmap=sockmap)
    argv = mesh.agent(Layout(tmp_path), topo.nodes[0])
    assert argv[argv.index("--redirect-mode") + 1] == "ebpf"
    assert ("--ebpf-sockmap" in argv) is sockmap


def test_agent_and_ztunnel_of_a_node_share_the_agent_metrics_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ztunnel serves the agent's metrics from the socket the agent of *its* node serves."""
    counter = itertools.count(1)
    topo = topology.build(2, 0, lambda: PodUid(f"uid-{next(counter)}"))
    monkeypatch.setattr(components, "cgroup2_mount", lambda: Path("/sys/fs/cgroup"))
    mesh = components.MeshComponents(python="py")
    layout = Layout(tmp_path)
    paths = []
    for node in topo.nodes:
        agent, ztunnel = mesh.agent(layout, node), mesh.ztunnel(layout, node)
        served = agent[agent.index("--metrics-socket") + 1]
        assert ztunnel[ztunnel.index("--agent-metrics-socket") + 1] == served
        assert Path(served).parent == layout.node_dir(node)
        paths.append(served)
    assert len(set(paths)) == 2
