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
