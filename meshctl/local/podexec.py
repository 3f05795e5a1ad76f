"""``python -m meshctl.local.podexec [--netns PATH] [--cgroup DIR] [--detach --log F --pid-file P]
-- CMD...``

A tiny exec wrapper, the only place a process joins a pod:

* join the cgroup (write our pid to ``cgroup.procs``), enter the network namespace, then
  ``execvp`` CMD, so CMD inherits our pid and stdio (``meshctl local exec``);
* with ``--detach``: fork, start a new session in the child, send its stdout/stderr to ``--log``,
  then join and exec as above; the parent writes the child's pid file and exits 0 once the child
  has joined (or 126 if it could not). The child is re-parented to init: whoever started us never
  holds a child process that outlives ``meshctl``.

Exit status 126 when the pod cannot be joined, 127 when CMD is not found; otherwise CMD's own.
"""

from __future__ import annotations

import argparse
import os
import sys

from meshctl.errors import MeshctlError
from meshctl.local import pidfile
from meshctl.local.nsenter import join_cgroup, join_netns


def _join(cgroup: str | None, netns: str | None) -> None:
    if cgroup:
        join_cgroup(cgroup)
    if netns:
        join_netns(netns)


def _exec(cmd: list[str]) -> int:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"meshctl-podexec: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127


def _detach(args: argparse.Namespace, cmd: list[str]) -> int:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(ready_r)
        try:
            os.setsid()
            fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            _join(args.cgroup, args.netns)
        except (OSError, MeshctlError) as exc:
            print(f"meshctl-podexec: {exc}", file=sys.stderr)
            os._exit(126)
        os.write(ready_w, b"1")
        os.close(ready_w)
        os._exit(_exec(cmd))
    os.close(ready_w)
    joined = os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    if not joined:
        os.waitpid(pid, 0)
        print(f"meshctl-podexec: {cmd[0]} could not start, see {args.log}", file=sys.stderr)
        return 126
    pidfile.write(args.pid_file, pid)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshctl-podexec")
    parser.add_argument("--netns", help="path of the network namespace file to enter")
    parser.add_argument("--cgroup", help="cgroup v2 directory to join")
    parser.add_argument("--detach", action="store_true", help="run in the background")
    parser.add_argument("--log", help="with --detach: stdout/stderr go here")
    parser.add_argument("--pid-file", help="with --detach: the child's pid is written here")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("missing command after --")
    if args.detach:
        if not args.log or not args.pid_file:
            parser.error("--detach needs --log and --pid-file")
        return _detach(args, cmd)
    try:
        _join(args.cgroup, args.netns)
    except MeshctlError as exc:
        print(f"meshctl-podexec: {exc}", file=sys.stderr)
        return 126
    return _exec(cmd)


if __name__ == "__main__":
    sys.exit(main())
