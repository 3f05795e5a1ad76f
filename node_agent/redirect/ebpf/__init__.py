"""The ``ebpf`` redirection mode: programs from ``bpf/`` at the node's cgroup and each enrolled
pod's netns, driven by maps keyed by the pod's netns cookie.

Layout under ``/sys/fs/bpf/nodemesh/<node>/`` (``pin_dir``)::

    maps/nm_*                 every map of bpf/lib/maps.h
    progs-<pid>/<prog>        only while the agent starts: the programs the BCC child loaded
    links/<prog>              connect4, sock_ops and getsockopt attached to the node's cgroup;
                              nm_sk_msg attached to maps/nm_hops (only with ``sockmap``)
    pods/<netns cookie>       the sk_lookup link of one enrolled pod's netns

Invariants:

* Everything is pinned, so the agent's exit changes nothing: pods stay redirected. A restarted
  agent whose programs have the same digest keeps the pinned links; a new digest attaches the new
  programs, moves every pod link to the new sk_lookup program, then drops the old links.
* A pod is switched on by one map write, its ``nm_pods`` entry, made last (after its sk_lookup
  link and ``nm_pod_ips``) and removed first, so a pod is redirected both ways or not at all.
* Outside enrolled netns the programs change nothing: the node itself and unenrolled pods pass.
* With ``sockmap`` (``--ebpf-sockmap``), the in-pod hop between an app's captured connection and
  the ztunnel's socket accepted on 15001 skips TCP/IP: sock_ops puts both ends into ``nm_hops``
  and sk_msg hands each message to the peer's receive queue. Without it, sock_ops is compiled
  without that code and a pinned sk_msg link from an earlier run is dropped, so no socket is
  touched. Entries leave ``nm_hops`` when their socket closes. Experimental and off by default:
  the ingress redirect bypasses TCP's flow control, so a sender faster than the ztunnel queues
  bytes in the ztunnel's socket until protocol memory runs out and its write fails (ENOMEM).
* :func:`teardown` removes a node's whole pin directory, by name, and with it every attachment.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Final

from node_agent.errors import NetnsError, RedirectError
from node_agent.netns import run_in_netns
from node_agent.redirect.ebpf import consts as k
from node_agent.redirect.ebpf import sys as bpfsys
from node_agent.redirect.plan import EMPTY, PREROUTING_CHAIN, Plan, Settings, plan_for_pod

MODE: Final = "ebpf"
PIN_ROOT: Final = bpfsys.BPF_FS / "nodemesh"
log = logging.getLogger(__name__)

#: cgroup programs: function → attach type
CGROUP_PROGRAMS: Final = {
    "nm_connect4": bpfsys.ATTACH_CGROUP_INET4_CONNECT,
    "nm_connect6": bpfsys.ATTACH_CGROUP_INET6_CONNECT,
    "nm_sockops": bpfsys.ATTACH_CGROUP_SOCK_OPS,
    "nm_getsockopt": bpfsys.ATTACH_CGROUP_GETSOCKOPT,
}
_SIZES: Final = {
    k.MAP_PODS: (8, 16),
    k.MAP_POD_IPS: (4, 8),
    k.MAP_FLOWS: (16, 8),
    k.MAP_LISTENERS: (16, 8),
    k.MAP_HOP_TCP: (24, 1),
}


def _update(pin: Path, prog_fd: int) -> None:
    """Point a pinned link at ``prog_fd`` (atomic: the hook is never empty)."""
    link = bpfsys.obj_get(pin)
    try:
        bpfsys.link_update(link, prog_fd, f"link {pin}")
    finally:
        os.close(link)


def _attach_or_update(pin: Path, prog_fd: int, target_fd: int, attach: int, what: str) -> None:
    if pin.exists():
        _update(pin, prog_fd)
        return
    link = bpfsys.link_create(prog_fd, target_fd, attach, what)
    try:
        bpfsys.obj_pin(link, pin)
    finally:
        os.close(link)


def pin_dir(node: str, root: Path = PIN_ROOT) -> Path:
    if not node or "/" in node or node.startswith("."):
        raise RedirectError(f"node name {node!r} cannot name a pin directory")
    return root / node


def headers_dir() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def probe(cgroup: Path) -> str | None:
    """None if this machine can run the eBPF mode, else the first reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    try:
        if reason := bpfsys.bpf_syscall_works():
            return reason
        for name, t in (
            ("cgroup/connect4 (CGROUP_SOCK_ADDR)", bpfsys.PROG_CGROUP_SOCK_ADDR),
            ("sock_ops", bpfsys.PROG_SOCK_OPS),
            ("cgroup/getsockopt (CGROUP_SOCKOPT)", bpfsys.PROG_CGROUP_SOCKOPT),
            ("sk_lookup", bpfsys.PROG_SK_LOOKUP),
        ):
            if not bpfsys.prog_type_supported(t):
                return f"the kernel does not support {name} programs"
        bpfsys.netns_cookie_current()
    except (RedirectError, OSError) as exc:
        return str(exc)
    if find_spec("bcc") is None:
        return "the bcc Python module is not importable (install python3-bpfcc; scripts/setup.sh)"
    hdr = headers_dir()
    if not (hdr / "include").is_dir() and "BCC_KERNEL_SOURCE" not in os.environ:
        return f"no kernel headers at {hdr} (install linux-headers and link them; scripts/setup.sh)"
    if not (cgroup / "cgroup.procs").exists():
        return f"{cgroup} is not a cgroup v2 directory"
    return None


def teardown(node: str, root: Path = PIN_ROOT) -> bool:
    """Remove every pin of ``node`` (maps, links: all its attachments go with them)."""
    d = pin_dir(node, root)
    if not d.exists():
        return False
    shutil.rmtree(d)
    with contextlib.suppress(OSError):
        root.rmdir()  # only if no other node uses it
    return True


@dataclass(frozen=True, slots=True)
class PodState:
    """What the maps say about one netns."""

    info: k.PodInfo | None
    linked: bool


class EbpfRedirector:
    """:class:`node_agent.redirect.Redirector` for the ``ebpf`` mode."""

    mode = MODE

    def __init__(self, pin_dir: Path, sk_lookup_fd: int, maps: dict[str, int]) -> None:
        self.dir = pin_dir
        self._sk_lookup_fd = sk_lookup_fd
        self._maps = maps
        self._cookies: dict[str, int] = {}  # netns path → cookie, to clean up after the netns went
        #: the loaded programs (``loader.Pinned``): their fds stay open while we live
        self.loaded: object = None

    # -- setup --------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        node: str,
        cgroup: Path,
        source_dir: Path | None = None,
        root: Path = PIN_ROOT,
        *,
        sockmap: bool = False,
    ) -> EbpfRedirector:
        """Load the programs (raises :class:`~loader.LoadError` with the verifier's message),
        attach them to ``cgroup`` (or move the pinned links to them) and open the maps."""
        from node_agent.redirect.ebpf import loader

        bpfsys.mount_bpffs()
        d = pin_dir(node, root)
        for sub in ("maps", "links", "pods"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # BCC (and LLVM with it) lives only in a short-lived child: this process stays lean
        loaded = loader.load_in_child(source_dir or loader.default_source_dir(), d / "maps",
                                      d / f"progs-{os.getpid()}", sockmap=sockmap)
        maps = {name: bpfsys.obj_get(d / "maps" / name) for name in k.MAPS}
        sk_msg_pin = d / "links" / "nm_sk_msg"
        if sockmap:
            _attach_or_update(sk_msg_pin, loaded.prog_fds["nm_sk_msg"], maps[k.MAP_HOPS],
                              bpfsys.ATTACH_SK_MSG_VERDICT, f"nm_sk_msg to {k.MAP_HOPS}")
        else:
            sk_msg_pin.unlink(missing_ok=True)  # the link (and the redirection) goes with its pin
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for fn, attach in CGROUP_PROGRAMS.items():
                _attach_or_update(d / "links" / fn, loaded.prog_fds[fn], cg_fd, attach,
                                  f"{fn} to {cgroup}")
        finally:
            os.close(cg_fd)
        self = cls(d, loaded.prog_fds["nm_sk_lookup"], maps)
        self.loaded = loaded  # keeps the programs' fds open
        for pin in sorted((d / "pods").iterdir()):
            try:
                _update(pin, self._sk_lookup_fd)
            except bpfsys.BpfError as exc:  # its netns is gone: collect() drops the rest
                log.info("dropping pod link %s: %s", pin.name, exc)
                pin.unlink()
        log.info("eBPF programs %s attached to %s (pins in %s; sockmap %s)", loaded.digest, cgroup,
                 d, "on" if sockmap else "off")
        return self

    def close(self) -> None:
        """Close our program and map fds, as the agent's exit would: the pins and links keep
        every pod redirected."""
        close = getattr(self.loaded, "close", None)
        if close is not None:
            close()
        for fd in self._maps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._maps = {}

    # -- one pod ------------------------------------------------------------------------------

    def _cookie(self, netns_path: str) -> int:
        cookie = run_in_netns(netns_path, bpfsys.netns_cookie_current)
        self._cookies[netns_path] = cookie
        return cookie

    def _state(self, cookie: int) -> PodState:
        raw = bpfsys.map_lookup(self._maps[k.MAP_PODS], k.netns_key(cookie), 16)
        info = k.PodInfo.unpack(raw) if raw is not None else None
        return PodState(info, (self.dir / "pods" / str(cookie)).exists())

    def _link(self, netns_path: str, cookie: int) -> None:
        pin = self.dir / "pods" / str(cookie)
        if pin.exists():
            return
        try:
            ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(f"cannot open netns {netns_path}: {exc.strerror}") from exc
        try:
            link = bpfsys.link_create(
                self._sk_lookup_fd, ns_fd, bpfsys.ATTACH_SK_LOOKUP, f"sk_lookup to {netns_path}"
            )
        finally:
            os.close(ns_fd)
        try:
            bpfsys.obj_pin(link, pin)
        finally:
            os.close(link)

    def apply_blocking(self, netns_path: str, plan: Plan, pod_ip: ipaddress.IPv4Address) -> bool:
        info = _pod_info(plan, pod_ip)
        cookie = self._cookie(netns_path)
        state = self._state(cookie)
        if state.info == info and state.linked:
            return False
        try:
            self._link(netns_path, cookie)
            bpfsys.map_update(
                self._maps[k.MAP_POD_IPS], k.ip_key(pod_ip), k.netns_key(cookie), "nm_pod_ips"
            )
            bpfsys.map_update(self._maps[k.MAP_PODS], k.netns_key(cookie), info.pack(), "nm_pods")
        except RedirectError:
            self._forget(cookie, pod_ip)  # never half-redirected
            raise
        return True

    def read_blocking(self, netns_path: str) -> Plan:
        """The plan the netns's entries implement (``EMPTY`` unless both switch and link exist)."""
        state = self._state(self._cookie(netns_path))
        if state.info is None or not state.linked:
            return EMPTY
        return plan_for_pod(state.info.ip, Settings(host_probe_ip=state.info.host_probe))

    def remove_blocking(self, netns_path: str) -> bool:
        try:
            cookie = self._cookie(netns_path)
        except NetnsError:
            known = self._cookies.get(netns_path)
            if known is None:
                raise
            cookie = known
        state = self._state(cookie)
        self._forget(cookie, state.info.ip if state.info else None)
        self._cookies.pop(netns_path, None)
        return state.info is not None or state.linked

    def _forget(self, cookie: int, pod_ip: ipaddress.IPv4Address | None) -> None:
        """Every entry of one netns, the switch (nm_pods) first."""
        nk = k.netns_key(cookie)
        bpfsys.map_delete(self._maps[k.MAP_PODS], nk)
        if pod_ip is not None:
            ips = self._maps[k.MAP_POD_IPS]
            if bpfsys.map_lookup(ips, k.ip_key(pod_ip), 8) == nk:
                bpfsys.map_delete(ips, k.ip_key(pod_ip))
        for ip_raw in list(bpfsys.map_keys(self._maps[k.MAP_POD_IPS], 4)):
            if bpfsys.map_lookup(self._maps[k.MAP_POD_IPS], ip_raw, 8) == nk:
                bpfsys.map_delete(self._maps[k.MAP_POD_IPS], ip_raw)
        for port in (k.NM_INBOUND_PORT, k.NM_HBONE_PORT):
            bpfsys.map_delete(self._maps[k.MAP_LISTENERS], k.ListenerKey(cookie, port).pack())
        for raw in bpfsys.map_keys(self._maps[k.MAP_FLOWS], 16):
            if k.FlowKey.unpack(raw).netns == cookie:
                bpfsys.map_delete(self._maps[k.MAP_FLOWS], raw)
        for raw in bpfsys.map_keys(self._maps[k.MAP_HOP_TCP], 24):
            if k.HopKey.unpack(raw).netns == cookie:
                bpfsys.map_delete(self._maps[k.MAP_HOP_TCP], raw)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "pods" / str(cookie)).unlink()

    def collect_blocking(self, live_netns: Iterable[str]) -> int:
        """Remove the state of every netns not in ``live_netns``; how many were removed."""
        live: set[int] = set()
        for path in live_netns:
            with contextlib.suppress(NetnsError):
                live.add(self._cookie(path))
        known = {
            int.from_bytes(raw, "little")
            for raw in bpfsys.map_keys(self._maps[k.MAP_PODS], 8)
        }
        known |= {int(p.name) for p in (self.dir / "pods").iterdir() if p.name.isdigit()}
        stale = known - live
        for cookie in sorted(stale):
            state = self._state(cookie)
            self._forget(cookie, state.info.ip if state.info else None)
            log.info("removed stale eBPF state of netns cookie %d", cookie)
        return len(stale)

    # -- the Redirector protocol --------------------------------------------------------------

    async def apply(self, netns_path: str, plan: Plan, pod_ip: ipaddress.IPv4Address) -> bool:
        return await asyncio.to_thread(self.apply_blocking, netns_path, plan, pod_ip)

    async def read(self, netns_path: str) -> Plan:
        return await asyncio.to_thread(self.read_blocking, netns_path)

    async def remove(self, netns_path: str) -> bool:
        return await asyncio.to_thread(self.remove_blocking, netns_path)

    async def collect(self, live_netns: Iterable[str]) -> int:
        return await asyncio.to_thread(self.collect_blocking, list(live_netns))


def _pod_info(plan: Plan, pod_ip: ipaddress.IPv4Address) -> k.PodInfo:
    """The plan as the programs implement it; a plan they cannot implement is refused."""
    inbound = plan.chain(PREROUTING_CHAIN)
    if inbound is None:
        raise RedirectError("plan has no inbound chain")
    probe = None
    for rule in inbound.rules:
        if rule.source is not None:
            probe = rule.source.network_address
    expected = plan_for_pod(pod_ip, Settings(host_probe_ip=probe))
    if plan != expected:
        raise RedirectError(
            "the eBPF programs implement only the standard plan (ports 15001/15006/15008, "
            f"mark {k.NM_ZTUNNEL_MARK:#x}); got {plan}"
        )
    return k.PodInfo(pod_ip, probe)
