"""``python -m meshctl.local.podexec --netns PATH [--cgroup DIR] -- CMD...``

A tiny exec wrapper: join the cgroup, enter the network namespace, then ``execvp`` CMD, so CMD
keeps this process's pid (the pid ``up`` records) and inherits its stdio. Exit status 126 when
the pod cannot be joined, 127 when CMD is not found; otherwise it is CMD's own.
"""

from __future__ import annotations

import argparse
import os
import sys

from meshctl.errors import MeshctlError
from meshctl.local.nsenter import join_cgroup, join_netns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshctl-podexec")
    parser.add_argument("--netns", required=True, help="path of the network namespace file")
    parser.add_argument("--cgroup", help="cgroup v2 directory to join")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("missing command after --")
    try:
        if args.cgroup:
            join_cgroup(args.cgroup)
        join_netns(args.netns)
    except MeshctlError as exc:
        print(f"meshctl-podexec: {exc}", file=sys.stderr)
        return 126
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 - running the user's command is the point
    except OSError as exc:
        print(f"meshctl-podexec: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
