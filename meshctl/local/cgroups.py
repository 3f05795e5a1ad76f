"""The cluster's cgroup v2 subtree: ``<cgroup2 mount>/nodemesh/``.

Pods live in ``nodemesh/<node>/<pod-uid>`` (docs/CONTRACTS.md); the mesh's own processes in
``nodemesh/_components/<name>`` so that ``down`` finds every process the cluster ever started
with one walk of this subtree, even when a crash lost the pid files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from meshctl.errors import ClusterError
from meshctl.local.topology import CGROUP_SUBTREE

COMPONENTS: Final = "_components"


def cgroup2_mount(mounts: str = "/proc/mounts") -> str:
    """The first cgroup2 mount point (``/sys/fs/cgroup`` or, in hybrid layouts, ``.../unified``)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError as exc:
        raise ClusterError(f"cannot read {mounts}: {exc}") from exc
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return fields[1]
    raise ClusterError(
        "no cgroup2 file system is mounted (see /proc/mounts); "
        "mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )


def subtree(mount: str) -> Path:
    return Path(mount) / CGROUP_SUBTREE


def component_cgroup(mount: str, name: str) -> Path:
    return subtree(mount) / COMPONENTS / name


def create(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClusterError(f"cannot create cgroup {path}: {exc}; is {path.parent} writable?") \
            from exc


def walk_bottom_up(root: Path) -> list[Path]:
    """``root`` and every cgroup below it, children before parents."""
    if not root.is_dir():
        return []
    out: list[Path] = []
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        out.append(Path(dirpath))
    return out


def pids(root: Path) -> set[int]:
    found: set[int] = set()
    for cg in walk_bottom_up(root):
        try:
            text = (cg / "cgroup.procs").read_text()
        except OSError:
            continue
        found.update(int(p) for p in text.split())
    return found


def kill_all(root: Path) -> None:
    """SIGKILL every process in the subtree at once (``cgroup.kill``, Linux >= 5.14)."""
    try:
        (root / "cgroup.kill").write_text("1")
    except OSError:
        pass  # older kernel or already gone: the caller also kills by pid


def remove(root: Path) -> list[Path]:
    """rmdir the subtree depth-first; returns the cgroups that could not be removed."""
    left: list[Path] = []
    for cg in walk_bottom_up(root):
        try:
            cg.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            left.append(cg)
    return left
