"""The controller's watched config dir: one YAML object per file, written atomically.

Files are ``<kind>.<namespace>.<name>.yaml`` (cluster-scoped: ``<kind>.<name>.yaml``). A write
goes to a hidden temporary file in the same directory and is renamed into place, so the
controller's watcher never reads half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from controller import yamlload
from meshctl.errors import ClusterError


def write(config_dir: Path, files: Iterable[tuple[str, Mapping[str, object]]]) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, obj in files:
        text = yaml.safe_dump(dict(obj), sort_keys=False)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=config_dir)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, config_dir / name)
        except OSError as exc:
            raise ClusterError(f"cannot write {config_dir / name}: {exc}") from exc


def remove(config_dir: Path, names: Iterable[str]) -> list[str]:
    """Remove the files; returns the names that did not exist."""
    missing: list[str] = []
    for name in names:
        try:
            (config_dir / name).unlink()
        except FileNotFoundError:
            missing.append(name)
        except OSError as exc:
            raise ClusterError(f"cannot remove {config_dir / name}: {exc}") from exc
    return missing


def read_all(config_dir: Path) -> list[tuple[Path, object]]:
    """Every ``*.yaml`` object in the dir (unparseable files are skipped: the controller
    reports those)."""
    out: list[tuple[Path, object]] = []
    if not config_dir.is_dir():
        return out
    for path in sorted(config_dir.glob("*.yaml")):
        if path.name.startswith("."):
            continue
        try:
            docs = yamlload.load_all(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if len(docs) <= 1:  # as yaml.safe_load: an empty file is None, several documents skipped
            out.append((path, docs[0] if docs else None))
    return out
