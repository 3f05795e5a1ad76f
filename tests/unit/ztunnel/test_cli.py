"""The ztunnel's flags and environment → Config."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztunnel.cli import parse_config

ARGS = ["--node", "node-1", "--controller", "10.77.0.1:15012", "--ca-root", "/ca.pem",
        "--token-file", "/token", "--zds-socket", "/zds.sock"]


def test_agent_metrics_socket_default_flag_env_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODEMESH_AGENT_METRICS_SOCKET", raising=False)
    cfg = parse_config(ARGS)
    assert cfg.agent_metrics_socket == Path("/var/run/nodemesh/agent-metrics.sock")
    assert cfg.agent_metrics_timeout == 1.0
    assert parse_config([*ARGS, "--agent-metrics-socket", "/run/m.sock"]).agent_metrics_socket \
        == Path("/run/m.sock")
    monkeypatch.setenv("NODEMESH_AGENT_METRICS_SOCKET", "/env/m.sock")
    assert parse_config(ARGS).agent_metrics_socket == Path("/env/m.sock")
    assert parse_config([*ARGS, "--agent-metrics-socket", ""]).agent_metrics_socket is None
    monkeypatch.setenv("NODEMESH_AGENT_METRICS_SOCKET", "")
    assert parse_config(ARGS).agent_metrics_socket is None
