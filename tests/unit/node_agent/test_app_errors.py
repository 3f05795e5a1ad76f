"""The agent's process ends with a one-line reason, not a traceback, when one of its tasks
cannot start (here: another live agent already serves its metrics socket)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_socket_served_by_another_agent_is_one_line(tmp_path: Path) -> None:
    metrics = tmp_path / "m.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(metrics))
    other.listen(1)
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "token").write_text("t")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "node_agent", "--node", "n1",
             "--controller", "127.0.0.1:9", "--ca-root", str(tmp_path / "ca.pem"),
             "--token-file", str(tmp_path / "token"), "--zds-socket", str(tmp_path / "z.sock"),
             "--metrics-socket", str(metrics), "--redirect-mode", "iptables",
             "--bpf-pin-root", str(tmp_path / "bpf")],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        other.close()
    assert proc.returncode == 1, proc.stderr
    assert f"another process serves {metrics}" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
