"""Discovery client message handling and CLI parsing."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from meshapi import discovery
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload
from node_agent import cli
from node_agent.discovery import DiscoveryClient
from node_agent.errors import ConfigError, DiscoveryError


def wl(uid: str) -> Workload:
    return Workload(
        uid=PodUid(uid), name=uid, namespace="default", service_account="default",
        identity=SpiffeId("cluster.local", "default", "default"), node=NodeName("node-1"),
        ip=ipaddress.IPv4Address("10.78.1.2"), enrolled=True, netns=f"/run/netns/{uid}",
    )


def line(msg: discovery.Message) -> bytes:
    return json.dumps(msg.to_wire()).encode()


async def test_handle_line_applies_and_resets_on_gap(tmp_path: Path) -> None:
    changes: list[bool] = []
    c = DiscoveryClient("c:15012", tmp_path / "ca", tmp_path / "t",
                        on_change=lambda: changes.append(True))
    c.handle_line(line(discovery.Snapshot("e1", 3, (wl("a"),), ())))
    await c.wait_synced()
    assert set(c.workloads) == {"a"} and changes == [True]
    c.handle_line(line(discovery.Heartbeat("e1", 3)))
    assert changes == [True]
    c.handle_line(line(discovery.Delta("e1", 4, remove_workloads=("a",))))
    assert c.workloads == {}
    with pytest.raises(DiscoveryError, match="does not follow"):
        c.handle_line(line(discovery.Delta("e1", 9)))
    assert c.state.resume_params() == {}  # next connection asks for a snapshot
    with pytest.raises(DiscoveryError, match="malformed"):
        c.handle_line(b"{not json")


ARGS = ["--node", "node-1", "--controller", "10.77.0.1:15012", "--ca-root", "/ca.pem",
        "--token-file", "/token", "--zds-socket", "/zds.sock"]


def test_cli_flags_and_env() -> None:
    cfg = cli.parse([*ARGS, "--host-probe-ip", "10.78.1.1"], {})
    assert cfg.node == "node-1" and cfg.redirect_mode == "auto"
    assert cfg.host_probe_ip == ipaddress.IPv4Address("10.78.1.1")
    env_cfg = cli.parse(ARGS[2:], {"NODEMESH_NODE": "node-2", "NODEMESH_REDIRECT_MODE": "iptables"})
    assert env_cfg.node == "node-2" and env_cfg.redirect_mode == "iptables"
    assert cli.parse(ARGS, {"NODEMESH_NODE": "node-2"}).node == "node-1"  # flag wins


def test_ebpf_sockmap_is_off_unless_asked() -> None:
    assert cli.parse(ARGS, {}).ebpf_sockmap is False
    assert cli.parse([*ARGS, "--ebpf-sockmap"], {}).ebpf_sockmap is True
    assert cli.parse(ARGS, {"NODEMESH_EBPF_SOCKMAP": "1"}).ebpf_sockmap is True
    env_on = {"NODEMESH_EBPF_SOCKMAP": "true"}
    assert cli.parse([*ARGS, "--no-ebpf-sockmap"], env_on).ebpf_sockmap is False


@pytest.mark.parametrize(
    ("extra", "msg"),
    [(["--redirect-mode", "bpf"], "not supported"), (["--host-probe-ip", "x"], "not an IPv4")],
)
def test_cli_rejects(extra: list[str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        cli.parse([*ARGS, *extra], {})


def test_cli_missing_flags() -> None:
    with pytest.raises(ConfigError, match="--node"):
        cli.parse(ARGS[2:], {})


def test_metrics_socket_default_flag_env_and_off() -> None:
    assert cli.parse(ARGS, {}).metrics_socket == Path("/var/run/nodemesh/agent-metrics.sock")
    assert cli.parse([*ARGS, "--metrics-socket", "/run/m.sock"], {}).metrics_socket == Path(
        "/run/m.sock")
    env = {"NODEMESH_AGENT_METRICS_SOCKET": "/env/m.sock"}
    assert cli.parse(ARGS, env).metrics_socket == Path("/env/m.sock")
    assert cli.parse([*ARGS, "--metrics-socket", ""], env).metrics_socket is None
