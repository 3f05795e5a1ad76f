"""Matching pods to the network namespaces found in /proc (pure part)."""

from __future__ import annotations

import ipaddress

from node_agent.podnetns import ProcNetns, match, pod_uid_from_cgroup

UID_A = "0b3c7c1e-8a4f-4d55-9a8e-6f3b7a1c2d3e"
UID_B = "5f2e9d10-1111-4222-8333-944455556666"
HOST = (1, 100)
HOSTS = frozenset({HOST})


def ip(s: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(s)


def test_cgroup_systemd_driver() -> None:
    text = (
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
        + UID_A.replace("-", "_")
        + ".slice/cri-containerd-0123456789abcdef.scope\n"
    )
    assert pod_uid_from_cgroup(text) == UID_A


def test_cgroup_cgroupfs_driver_v1_lines() -> None:
    text = (
        f"12:memory:/kubepods/burstable/pod{UID_B}/abcdef\n"
        f"11:cpu:/kubepods/burstable/pod{UID_B}/abcdef\n"
    )
    assert pod_uid_from_cgroup(text) == UID_B


def test_cgroup_without_kubepods() -> None:
    assert pod_uid_from_cgroup("0::/system.slice/containerd.service\n") is None
    assert pod_uid_from_cgroup(f"0::/user.slice/pod{UID_A}\n") is None
    assert pod_uid_from_cgroup("") is None


def no_ips(_key: tuple[int, int]) -> frozenset[ipaddress.IPv4Address]:
    raise AssertionError("the IP fallback must not run when cgroups matched")


def test_match_by_cgroup_uses_oldest_process() -> None:
    procs = [
        ProcNetns(500, (1, 7), UID_A),
        ProcNetns(420, (1, 7), UID_A),
        ProcNetns(600, HOST, None),
    ]
    assert match(procs, HOSTS, {UID_A: None}, no_ips) == {UID_A: ((1, 7), 420)}


def test_host_netns_never_matches_even_by_ip() -> None:
    procs = [ProcNetns(1, HOST, UID_A)]
    calls: list[tuple[int, int]] = []

    def ips(key: tuple[int, int]) -> frozenset[ipaddress.IPv4Address]:
        calls.append(key)
        return frozenset({ip("10.0.0.5")})

    assert match(procs, HOSTS, {UID_A: ip("10.0.0.5")}, ips) == {}
    assert calls == []


def test_match_by_ip_when_no_cgroup_hint() -> None:
    procs = [ProcNetns(10, (1, 7), None), ProcNetns(11, (1, 8), None), ProcNetns(12, (1, 9), None)]
    table = {(1, 7): {"10.1.0.2"}, (1, 8): {"10.1.0.3", "127.0.0.1"}, (1, 9): set()}
    seen: list[tuple[int, int]] = []

    def ips(key: tuple[int, int]) -> frozenset[ipaddress.IPv4Address]:
        seen.append(key)
        return frozenset(ip(a) for a in table[key])

    got = match(procs, HOSTS, {UID_A: ip("10.1.0.3"), UID_B: None}, ips)
    assert got == {UID_A: ((1, 8), 11)}
    # stops listing netns once every pod with an IP is found
    assert seen == [(1, 7), (1, 8)]


def test_ambiguous_netns_is_not_matched() -> None:
    # two wanted pods claim the same netns (by cgroup): neither gets it
    procs = [ProcNetns(10, (1, 7), UID_A), ProcNetns(11, (1, 7), UID_B)]
    assert match(procs, HOSTS, {UID_A: None, UID_B: None}, no_ips) == {}
    # one netns holding the IPs of two pods: neither
    procs = [ProcNetns(10, (1, 7), None)]
    got = match(
        procs, HOSTS, {UID_A: ip("10.1.0.2"), UID_B: ip("10.1.0.3")},
        lambda _k: frozenset({ip("10.1.0.2"), ip("10.1.0.3")}),
    )
    assert got == {}


def test_cgroup_match_wins_and_netns_is_taken_once() -> None:
    procs = [ProcNetns(10, (1, 7), UID_A), ProcNetns(20, (1, 8), None)]
    got = match(
        procs, HOSTS, {UID_A: ip("10.1.0.2"), UID_B: ip("10.1.0.2")},
        lambda key: frozenset({ip("10.1.0.2")}) if key == (1, 7) else frozenset(),
    )
    # A by cgroup; B's IP is only in A's (taken) netns, so B stays unmatched
    assert got == {UID_A: ((1, 7), 10)}
