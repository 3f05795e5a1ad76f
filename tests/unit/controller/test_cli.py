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
