"""``python -m bench.holder HOST PORT``: hold idle HTTP connections open from inside pods.

Reads commands on stdin, one a line: ``<netns path> <cgroup dir> <count>``. For each, this
(single-threaded) process joins the pod's cgroup and netns, as ``meshctl local exec`` would, and
opens ``count`` connections to HOST:PORT; on each it sends one keep-alive ``GET /`` and waits for
the ``200``, so the connection is known to be carried end to end (through the mesh or the
sidecars, whatever captures the pod's traffic), then leaves it idle. It answers ``ok <total>``
or ``error <reason>`` on stdout. Sockets keep the pod's netns and cgroup they were created in
(the mesh's eBPF capture looks at the socket's cgroup), so one process serves many pods. EOF on
stdin closes every connection and exits.
"""

from __future__ import annotations

import resource
import socket
import sys

from meshctl.errors import MeshctlError
from meshctl.local.nsenter import join_cgroup, join_netns

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def open_one(host: str, port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(REQUEST)
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer {head[:60]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    host, port = args[0], int(args[1])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[socket.socket] = []
    for line in sys.stdin:
        try:
            netns, cgroup, count = line.split()
            join_cgroup(cgroup)
            join_netns(netns)
            for _ in range(int(count)):
                held.append(open_one(host, port))
            print(f"ok {len(held)}", flush=True)
        except (OSError, ValueError, MeshctlError) as exc:
            print(f"error {exc!r}".replace("\n", " "), flush=True)
    for s in held:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
