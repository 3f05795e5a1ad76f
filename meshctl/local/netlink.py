"""The one edge module that changes links, addresses, routes and namespaces.

:class:`Netlink` is the seam; :class:`IpRoute2` implements it with the ``ip`` tool (iproute2),
one short call per operation, failures wrapped in :class:`NetworkError` with the command and
its stderr. Tests of the planning code use a fake that records the operations.
"""

from __future__ import annotations

import json
import subprocess
from typing import Protocol

from meshctl.errors import NetworkError
from meshctl.local import network as net


class Netlink(Protocol):
    def apply(self, op: net.Op) -> None: ...

    def list_netns(self) -> list[str]: ...

    def list_links(self) -> list[str]:
        """Interface names in the host namespace."""
        ...

    def delete_netns(self, name: str) -> None: ...

    def delete_link(self, name: str) -> None: ...


def _ns(netns: str | None) -> list[str]:
    return ["-n", netns] if netns is not None else []


def argv(op: net.Op) -> list[str]:
    """The ``ip`` command line for ``op`` (without the leading ``ip``)."""
    match op:
        case net.AddNetns(name):
            return ["netns", "add", name]
        case net.AddBridge(netns, name):
            return [*_ns(netns), "link", "add", name, "type", "bridge"]
        case net.AddVeth(name, netns, peer, peer_netns):
            where = ["netns", netns] if netns is not None else []
            return ["link", "add", name, *where, "type", "veth", "peer", "name", peer,
                    "netns", peer_netns]
        case net.SetMaster(netns, dev, master):
            return [*_ns(netns), "link", "set", dev, "master", master]
        case net.AddAddress(netns, dev, cidr):
            return [*_ns(netns), "addr", "add", cidr, "dev", dev]
        case net.LinkUp(netns, dev):
            return [*_ns(netns), "link", "set", dev, "up"]
        case net.AddRoute(netns, dst, via):
            return [*_ns(netns), "route", "add", dst, "via", via]
        case net.Sysctl(netns, key, value):
            return ["netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"]


class IpRoute2:
    def _run(self, args: list[str]) -> str:
        cmd = ["ip", *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"`{' '.join(cmd)}` could not run: {exc}; is iproute2 installed?") \
                from exc
        if done.returncode != 0:
            raise NetworkError(
                f"`{' '.join(cmd)}` failed: {done.stderr.strip()} "
                "(leftovers of an earlier cluster? run `meshctl local down`)"
            )
        return done.stdout

    def apply(self, op: net.Op) -> None:
        self._run(argv(op))

    def list_netns(self) -> list[str]:
        out = self._run(["-json", "netns", "list"])
        entries = json.loads(out) if out.strip() else []
        return [str(e["name"]) for e in entries if isinstance(e, dict) and "name" in e]

    def list_links(self) -> list[str]:
        out = self._run(["-json", "link", "show"])
        entries = json.loads(out) if out.strip() else []
        return [str(e["ifname"]) for e in entries if isinstance(e, dict) and "ifname" in e]

    def delete_netns(self, name: str) -> None:
        self._run(["netns", "del", name])

    def delete_link(self, name: str) -> None:
        self._run(["link", "del", name])
