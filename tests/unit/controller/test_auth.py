from __future__ import annotations

from pathlib import Path

import pytest

from controller.auth import NodeTokens
from controller.errors import AuthError

TOKEN = "a" * 32


def test_tokens_and_reload(tmp_path: Path) -> None:
    (tmp_path / "node-1").write_text(TOKEN + "\n")
    (tmp_path / "node-short").write_text("short")
    tokens = NodeTokens(tmp_path, recheck_seconds=0)
    assert tokens.check(f"Bearer {TOKEN}") == "node-1"
    assert tokens.nodes == {"node-1"}
    for header in [None, "", "Basic xyz", "Bearer ", "Bearer short", f"Bearer {TOKEN}x"]:
        with pytest.raises(AuthError):
            tokens.check(header)
    (tmp_path / "node-2").write_text("b" * 32)
    (tmp_path / "node-1").unlink()
    assert tokens.check("Bearer " + "b" * 32) == "node-2"
    with pytest.raises(AuthError):
        tokens.check(f"Bearer {TOKEN}")


def test_missing_dir_refuses_everyone(tmp_path: Path) -> None:
    tokens = NodeTokens(tmp_path / "nope", recheck_seconds=0)
    with pytest.raises(AuthError):
        tokens.check(f"Bearer {TOKEN}")
