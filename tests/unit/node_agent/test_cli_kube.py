"""``nodemesh-agent --source kubernetes``: the flags the DaemonSet passes, and their checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent import cli
from node_agent.cni import fallback
from node_agent.errors import ConfigError


def test_kubernetes_source_needs_no_controller_flags(tmp_path: Path) -> None:
    plugin = tmp_path / "nodemesh-cni"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    cfg = cli.parse(
        [
            "--source", "kubernetes", "--node", "node-1", "--zds-socket", "/run/z.sock",
            "--cni-bin-dir", "/host/opt/cni/bin", "--cni-conf-dir", "/host/etc/cni/net.d",
            "--cni-plugin", str(plugin), "--proc-root", "/host/proc",
        ],
        {"POD_NAME": "nodemesh-node-x1", "POD_NAMESPACE": "nodemesh-system"},
    )
    assert cfg.source == "kubernetes" and cfg.controller is None and cfg.token_file is None
    assert cfg.kube is not None
    assert cfg.kube.proc_root == Path("/host/proc")
    assert cfg.kube.cni_socket == Path("/var/run/nodemesh/cni.sock")
    # where the plugin looks for its fallback list by default
    assert cfg.kube.cni_fallback_file == Path(fallback.DEFAULT_PATH)
    assert (cfg.kube.pod_name, cfg.kube.pod_namespace) == ("nodemesh-node-x1", "nodemesh-system")
    assert cfg.kube.trust_domain == "cluster.local" and cfg.kube.kubeconfig is None


def test_controller_source_still_requires_its_flags() -> None:
    with pytest.raises(ConfigError, match="--controller, --ca-root, --token-file"):
        cli.parse(["--node", "n", "--zds-socket", "/z"], {})


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--source", "k8s"], "--source 'k8s' is not one of controller, kubernetes"),
        (["--source", "kubernetes", "--trust-domain", "Bad Domain"], "--trust-domain"),
        (["--source", "kubernetes", "--cni-bin-dir", "/x"], "go together"),
        (["--source", "kubernetes", "--cni-bin-dir", "/x", "--cni-conf-dir", "/y",
          "--cni-plugin", "/nonexistent/plugin"], "not an executable file"),
        (["--source", "kubernetes", "--pod-name", "p"], "--pod-name and --pod-namespace"),
        (["--source", "kubernetes", "--cni-fallback-file", "run/x"], "not an absolute path"),
    ],
)
def test_kubernetes_flags_rejected(extra: list[str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        cli.parse(["--node", "n", "--zds-socket", "/z", *extra], {})


@pytest.mark.parametrize(
    ("flags", "env", "want"),
    [
        (["--cni-socket", "/run/t/cni.sock"], {}, Path("/run/t/cni-fallback")),
        ([], {"NODEMESH_CNI_FALLBACK_FILE": "/x/list"}, Path("/x/list")),
        (["--cni-fallback-file", "/y/list"], {}, Path("/y/list")),
        (["--cni-fallback-file", ""], {}, None),  # turned off
    ],
)
def test_cni_fallback_file(flags: list[str], env: dict[str, str], want: Path | None) -> None:
    cfg = cli.parse(["--source", "kubernetes", "--node", "n", "--zds-socket", "/z", *flags], env)
    assert cfg.kube is not None and cfg.kube.cni_fallback_file == want
