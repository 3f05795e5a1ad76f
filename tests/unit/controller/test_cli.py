from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from controller import config as c
from controller.cli import parse_config


def test_flags_and_environment(tmp_path: Path) -> None:
    env = {
        c.ENV_CONFIG_DIR: "/env/config",
        c.ENV_STATE_DIR: "/env/state",
        c.ENV_NODE_TOKENS_DIR: "/env/tokens",
        c.ENV_API_SAN: "a.example, 10.0.0.1",
        c.ENV_WORKLOAD_CERT_TTL: "3600",
    }
    cfg = parse_config(["--config-dir", "/flag/config"], env)
    assert cfg.config_dir == Path("/flag/config")  # flag wins
    assert cfg.state_dir == Path("/env/state")
    assert cfg.api_sans == ("a.example", "10.0.0.1")
    assert cfg.workload_cert_ttl_seconds == 3600
    assert str(cfg.listen) == "0.0.0.0:15012" and str(cfg.metrics_listen) == "0.0.0.0:15014"
    cfg = parse_config(
        [
            "--api-san",
            "x",
            "--api-san",
            "127.0.0.1",
            "--listen",
            "[::1]:99",
            "--trust-domain",
            "example.org",
        ],
        env,
    )
    assert cfg.api_sans == ("x", "127.0.0.1") and cfg.listen == c.HostPort("::1", 99)
    assert cfg.trust_domain == "example.org"


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "nope"],
        ["--workload-cert-ttl", "abc"],
        ["--trust-domain", "UPPER CASE"],
        ["--ca-cert", "/x"],
        [],  # required dirs missing
    ],
)
def test_bad_flags_exit(argv: list[str]) -> None:
    env = (
        {}
        if not argv
        else {c.ENV_CONFIG_DIR: "/c", c.ENV_STATE_DIR: "/s", c.ENV_NODE_TOKENS_DIR: "/t"}
    )
    with pytest.raises(SystemExit) as info:
        parse_config(argv, env)
    assert info.value.code == 2


async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "tokens").mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "--config-dir",
        str(tmp_path / "config"),
        "--state-dir",
        str(tmp_path / "state"),
        "--node-tokens-dir",
        str(tmp_path / "tokens"),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    while b"event=controller_listening" not in seen:
        assert time.monotonic() < deadline, seen
        seen += await asyncio.wait_for(proc.stderr.readline(), 20)
    proc.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(proc.stderr.read(), 20)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert b"event=controller_stopped" in rest


async def test_startup_error_is_reported(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "--config-dir",
        str(tmp_path),
        "--state-dir",
        str(tmp_path / "state"),
        "--node-tokens-dir",
        str(tmp_path),
        "--ca-cert",
        str(tmp_path / "missing.pem"),
        "--ca-key",
        str(tmp_path / "missing.key"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert b"cannot read CA material" in err


def test_kubernetes_mode_flags_and_defaults() -> None:
    env = {
        c.ENV_SOURCE: "kubernetes",
        c.ENV_POD_NAME: "ctrl-7d9f-abcde",
        c.ENV_POD_NAMESPACE: "mesh",
    }
    cfg = parse_config([], env)
    assert cfg.source == "kubernetes" and cfg.config_dir is None and cfg.node_tokens_dir is None
    assert cfg.namespace == "mesh" and cfg.pod_name == "ctrl-7d9f-abcde"
    assert cfg.ca_secret == "nodemesh-ca" and cfg.ca_root_configmap == "nodemesh-ca-root"
    assert cfg.leader_lease == "nodemesh-controller" and cfg.token_audience == "nodemesh"
    assert cfg.node_service_account == "nodemesh-system:nodemesh-node"
    assert cfg.kubeconfig is None and cfg.state_dir is None
    cfg = parse_config(
        [
            "--kubeconfig",
            "/k/config",
            "--namespace",
            "other",
            "--pod-name",
            "p",
            "--ca-secret",
            "my-ca",
            "--node-service-account",
            "other:agent",
            "--state-dir",
            "/s",
        ],
        env,
    )
    assert cfg.kubeconfig == Path("/k/config") and cfg.namespace == "other" and cfg.pod_name == "p"
    assert cfg.ca_secret == "my-ca" and cfg.node_service_account == "other:agent"
    assert cfg.state_dir == Path("/s")


def test_kubernetes_pod_name_defaults_to_the_host_name() -> None:
    import socket

    cfg = parse_config(["--source", "kubernetes"], {})
    assert cfg.pod_name == socket.gethostname()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "cloud"], "expected one of local, kubernetes"),
        (["--source", "kubernetes", "--config-dir", "/c"], "--config-dir is for --source local"),
        (["--source", "kubernetes", "--node-tokens-dir", "/t"], "--node-tokens-dir is for"),
        (["--source", "kubernetes", "--node-service-account", "nodemesh-node"], "NAMESPACE:NAME"),
        (["--source", "kubernetes", "--namespace", "Bad_NS"], "--namespace"),
        (["--source", "kubernetes", "--ca-secret", "no/slash"], "--ca-secret"),
        (["--source", "kubernetes", "--token-audience", " "], "--token-audience"),
        (
            [
                "--kubeconfig",
                "/k",
                "--config-dir",
                "/c",
                "--state-dir",
                "/s",
                "--node-tokens-dir",
                "/t",
            ],
            "--kubeconfig is for --source kubernetes",
        ),
        (["--config-dir", "/c"], "--source local needs --state-dir, --node-tokens-dir"),
    ],
)
def test_bad_mode_combinations_say_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, {c.ENV_POD_NAME: "p"})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_path_normalization_flag() -> None:
    from meshapi.httppath import DEFAULT_PATH_NORMALIZATION, PathNormalization

    base = ["--config-dir", "/c", "--state-dir", "/s", "--node-tokens-dir", "/t"]
    assert parse_config(base, {}).path_normalization is DEFAULT_PATH_NORMALIZATION
    env = {c.ENV_PATH_NORMALIZATION: "BASE"}
    assert parse_config(base, env).path_normalization is PathNormalization.BASE
    cfg = parse_config([*base, "--path-normalization", "DECODE_AND_MERGE_SLASHES"], env)
    assert cfg.path_normalization is PathNormalization.DECODE_AND_MERGE_SLASHES  # flag wins
    with pytest.raises(SystemExit):
        parse_config([*base, "--path-normalization", "merge"], {})
