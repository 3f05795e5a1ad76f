"""Find the network namespaces of pods that started before the agent (no CNI call for them).

On Kubernetes every pod's sandbox (the pause process) lives in the pod's netns. We scan
``<proc_root>/<pid>/ns/net`` of every process, group processes by netns (device, inode), and
match netns to pods in two ways:

1. by the pod UID in the process's cgroup path (``.../kubepods-besteffort-pod<uid>.slice/...``
   with the systemd driver, ``/kubepods/burstable/pod<uid>/...`` with cgroupfs);
2. for pods not matched so far (other runtimes, the local cluster), by the pod IP: the netns
   whose interfaces hold the pod's IP.

Invariants: the node's own netns (the agent's, and that of ``<proc_root>/1``) is never
returned, so a host-network pod can never be matched; a netns is matched to at most one pod; a
stable path (a bind mount under ``netns_dir`` with the same device and inode) is preferred to a
``/proc/<pid>/ns/net`` path, which lives only as long as its process.

:func:`match` is pure; :func:`scan` and :func:`find` do the I/O (blocking: run in a thread).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import AgentError
from node_agent.netns import run_in_netns

log = logging.getLogger(__name__)

_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)

NetnsKey = tuple[int, int]  # (st_dev, st_ino) of the netns file


@dataclass(frozen=True, slots=True)
class ProcNetns:
    """One process and the netns it is in."""

    pid: int
    netns: NetnsKey
    #: the pod UID found in the process's cgroup path, if any
    pod_uid: str | None


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` text (systemd or cgroupfs driver), or None."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "kubepods" not in path:
            continue
        found = _POD_UID.findall(path)
        if found:
            return str(found[-1]).replace("_", "-")
    return None


def match(
    processes: Iterable[ProcNetns],
    host_netns: frozenset[NetnsKey],
    wanted: Mapping[str, ipaddress.IPv4Address | None],
    netns_ips: Callable[[NetnsKey], frozenset[ipaddress.IPv4Address]],
) -> dict[str, tuple[NetnsKey, int]]:
    """Pod UID -> (netns, pid of its oldest process) for every wanted pod that was found.

    ``wanted``: pod UID -> pod IP (None if not known yet: then only the cgroup match applies).
    ``netns_ips`` lists the IPv4 addresses of a netns; it is called at most once per netns and
    only for pods the cgroup match did not find.
    """
    groups: dict[NetnsKey, list[ProcNetns]] = {}
    for p in processes:
        if p.netns not in host_netns:
            groups.setdefault(p.netns, []).append(p)
    found: dict[str, tuple[NetnsKey, int]] = {}
    taken: set[NetnsKey] = set()
    for key in sorted(groups):
        procs = groups[key]
        uids = {p.pod_uid for p in procs if p.pod_uid is not None}
        hits = sorted(u for u in uids if u in wanted and u not in found)
        if len(hits) == 1:
            found[hits[0]] = (key, min(p.pid for p in procs))
            taken.add(key)
    by_ip = {ip: uid for uid, ip in wanted.items() if ip is not None and uid not in found}
    if by_ip:
        for key in sorted(groups):
            if key in taken:
                continue
            owners = {by_ip[ip]: ip for ip in netns_ips(key) if ip in by_ip}
            if len(owners) == 1:
                ((uid, ip),) = owners.items()
                found[uid] = (key, min(p.pid for p in groups[key]))
                taken.add(key)
                del by_ip[ip]
            if not by_ip:
                break
    return found


def _stat_key(path: str) -> NetnsKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def scan(proc_root: Path) -> tuple[frozenset[NetnsKey], list[ProcNetns]]:
    """(the node's netns, every process whose netns could be read). Blocking.

    The node's netns is the agent's own (it runs with the host network) and that of the host's
    pid 1 when it can be read."""
    own = _stat_key("/proc/thread-self/ns/net")
    if own is None:
        raise AgentError("cannot read /proc/thread-self/ns/net — is /proc mounted?")
    host = {own}
    if (init := _stat_key(str(proc_root / "1" / "ns" / "net"))) is not None:
        host.add(init)
    out: list[ProcNetns] = []
    with os.scandir(proc_root) as it:
        for entry in it:
            if not entry.name.isdigit():
                continue
            key = _stat_key(f"{entry.path}/ns/net")
            if key is None:
                continue  # the process ended, or is not ours to read
            try:
                cgroup = Path(entry.path, "cgroup").read_text()
            except OSError:
                cgroup = ""
            out.append(ProcNetns(int(entry.name), key, pod_uid_from_cgroup(cgroup)))
    if not out:
        raise AgentError(
            f"no process's netns is readable under {proc_root} — is the host's /proc mounted "
            "at --proc-root and does the agent have CAP_SYS_PTRACE?"
        )
    return frozenset(host), out


def _ipv4_addresses() -> frozenset[ipaddress.IPv4Address]:
    """The IPv4 addresses of the current thread's netns (call inside :func:`run_in_netns`)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return frozenset(
            ipaddress.IPv4Address(str(msg.get_attr("IFA_ADDRESS")))
            for msg in ipr.get_addr(family=socket.AF_INET)
            if msg.get_attr("IFA_ADDRESS")
        )


def stable_path(key: NetnsKey, pid: int, proc_root: Path, netns_dirs: Iterable[Path]) -> str:
    """A bind mount of the netns under one of ``netns_dirs`` if there is one, else the
    process's ``ns/net``."""
    for d in netns_dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in sorted(entries, key=lambda e: e.name):
            if _stat_key(e.path) == key:
                return e.path
    return str(proc_root / str(pid) / "ns" / "net")


def find(
    proc_root: Path,
    wanted: Mapping[str, ipaddress.IPv4Address | None],
    netns_dirs: Iterable[Path] = (Path("/var/run/netns"), Path("/run/netns")),
) -> dict[str, str]:
    """Pod UID -> netns path for the wanted pods found on this node. Blocking."""
    if not wanted:
        return {}
    host, processes = scan(proc_root)
    pids: dict[NetnsKey, int] = {}
    for p in processes:
        pids[p.netns] = min(pids.get(p.netns, p.pid), p.pid)

    def ips(key: NetnsKey) -> frozenset[ipaddress.IPv4Address]:
        path = str(proc_root / str(pids[key]) / "ns" / "net")
        try:
            return run_in_netns(path, _ipv4_addresses, timeout=5.0)
        except (AgentError, OSError) as exc:
            log.debug("cannot list the addresses of %s: %s", path, exc)
            return frozenset()

    dirs = list(netns_dirs)
    return {
        uid: stable_path(key, pid, proc_root, dirs)
        for uid, (key, pid) in match(processes, host, wanted, ips).items()
    }
