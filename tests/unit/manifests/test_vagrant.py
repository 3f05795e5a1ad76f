"""vagrant/: the real `vagrant validate` accepts the Vagrantfile (offline, no provider installed:
`--ignore-provider` skips only the provider blocks, which size the machines), every provisioning
script it names exists, is executable and parses (`bash -n`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.manifests.helpers import REPO, VAGRANT

SCRIPTS = sorted(VAGRANT.glob("*.sh"))


def vagrant_validate(directory: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("vagrant")
    if binary is None:
        pytest.fail("vagrant is not installed (scripts/setup.sh installs Debian's vagrant)")
    env = {
        **os.environ,
        # keep Vagrant's per-project state out of the repository
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot-vagrant"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
    }
    return subprocess.run(
        [binary, "validate", "--ignore-provider"], cwd=directory, env=env,
        capture_output=True, text=True, timeout=180, check=False,
    )


def test_vagrant_validate(tmp_path: Path) -> None:
    proc = vagrant_validate(VAGRANT, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully" in proc.stdout


def test_vagrant_validate_catches_a_missing_script(tmp_path: Path) -> None:
    """The check above can fail: the same Vagrantfile without one of its scripts is refused."""
    copy = tmp_path / "vagrant"
    shutil.copytree(VAGRANT, copy, ignore=shutil.ignore_patterns(".vagrant", "smoke.sh"))
    # the synced folder ".." must exist relative to the copy, as it does in the repository
    proc = vagrant_validate(copy, tmp_path)
    assert proc.returncode != 0
    assert "smoke.sh" in proc.stdout + proc.stderr


def test_vagrantfile_names_only_existing_scripts_and_needs_no_plugin() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    named = set(re.findall(r'path: "([^"]+)"', text))
    assert named, "no provisioning scripts named"
    for name in named:
        assert (VAGRANT / name).is_file(), name
    assert "require_plugin" not in text and "config.vagrant.plugins" not in text
    assert 'config.vm.box = BOX' in text and 'BOX = "debian/bookworm64"' in text
    # the image the scripts build is the one the manifests use
    assert 'IMAGE = "docker.io/library/nodemesh:0.1.0"' in text
    assert "image: nodemesh:0.1.0" in (REPO / "daemonset" / "30-node.yaml").read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    if script.name != "lib.sh":  # sourced, not run
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in script.read_text()


def test_bash_n_catches_a_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("if true; then\n")
    proc = subprocess.run(["bash", "-n", str(bad)], capture_output=True, timeout=30, check=False)
    assert proc.returncode != 0


def test_smoke_checks_identities_in_node_metrics() -> None:
    text = (VAGRANT / "smoke.sh").read_text()
    for needed in ("istio_tcp_connections_opened_total", "source_principal=",
                   "destination_principal=", ":15020/metrics",
                   "nodemesh.io/dataplane-mode: enabled"):
        assert needed in text, needed
