"""Builds the C plugin once per session (``make -C cni``), as the image build does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="session")
def plugin_binary() -> str:
    result = subprocess.run(
        ["make", "-C", str(REPO / "cni")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"make -C cni failed (gcc and libc6-dev installed?):\n{result.stderr}")
    binary = REPO / "cni" / "build" / "nodemesh-cni"
    assert binary.is_file()
    return str(binary)
