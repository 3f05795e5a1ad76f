"""Finding pod netns in /proc for real: processes in named namespaces, matched by IP."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent import podnetns
from node_agent.errors import AgentError
from node_agent.hostroute import source_towards
from node_agent.netns import run_in_netns


@pytest.fixture
def sleeper() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(netns: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "60"])
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _wait_in_netns(pid: int, netns: str) -> None:
    want = Path(f"/run/netns/{netns}").stat().st_ino
    for _ in range(200):
        try:
            if Path(f"/proc/{pid}/ns/net").stat().st_ino == want:
                return
        except OSError:
            pass
        subprocess.run(["sleep", "0.01"], check=True)
    raise AssertionError(f"pid {pid} never entered {netns}")


def test_find_by_ip_prefers_the_named_bind_mount(
    netns_factory: Callable[[str], str],
    veth_pair: Callable[[str, str, str, str], None],
    sleeper: Callable[[str], subprocess.Popen[bytes]],
) -> None:
    a, b = netns_factory("pa"), netns_factory("pb")
    veth_pair(a, b, "10.251.7.2/24", "10.251.7.3/24")
    pa, pb = sleeper(a), sleeper(b)
    _wait_in_netns(pa.pid, a)
    _wait_in_netns(pb.pid, b)
    found = podnetns.find(
        Path("/proc"),
        {
            "uid-a": ipaddress.IPv4Address("10.251.7.2"),
            "uid-b": ipaddress.IPv4Address("10.251.7.3"),
            "uid-c": ipaddress.IPv4Address("10.251.7.99"),  # nowhere
        },
    )
    # /var/run is a link to /run on Debian: either spelling is the same bind mount
    assert {u: os.path.realpath(p) for u, p in found.items()} == {
        "uid-a": f"/run/netns/{a}",
        "uid-b": f"/run/netns/{b}",
    }


def test_find_falls_back_to_the_process_path(
    netns_factory: Callable[[str], str],
    veth_pair: Callable[[str, str, str, str], None],
    sleeper: Callable[[str], subprocess.Popen[bytes]],
) -> None:
    a, b = netns_factory("qa"), netns_factory("qb")
    veth_pair(a, b, "10.251.8.2/24", "10.251.8.3/24")
    pa = sleeper(a)
    _wait_in_netns(pa.pid, a)
    found = podnetns.find(
        Path("/proc"), {"uid-a": ipaddress.IPv4Address("10.251.8.2")}, netns_dirs=()
    )
    path = found["uid-a"]
    assert path.startswith("/proc/") and path.endswith("/ns/net")
    assert Path(path).stat().st_ino == Path(f"/run/netns/{a}").stat().st_ino


def test_the_nodes_own_addresses_never_match() -> None:
    # 127.0.0.1 is in the node's netns (and in every pod's lo, which is never up in its own
    # netns unless configured): the node netns is skipped outright
    found = podnetns.find(Path("/proc"), {"uid-x": ipaddress.IPv4Address("127.0.0.1")},
                          netns_dirs=())
    assert all(not p.startswith(f"/proc/{1}/") for p in found.values())


def test_source_towards_a_pod_is_the_routes_preferred_source(
    netns_factory: Callable[[str], str],
    veth_pair: Callable[[str, str, str, str], None],
) -> None:
    # the node side (a) reaches the pod (b): the kubelet's probes would come from 10.251.9.1
    a, b = netns_factory("ra"), netns_factory("rb")
    veth_pair(a, b, "10.251.9.1/24", "10.251.9.7/24")
    got = run_in_netns(f"/run/netns/{a}",
                       lambda: source_towards(ipaddress.IPv4Address("10.251.9.7")))
    assert got == ipaddress.IPv4Address("10.251.9.1")
    # no route at all: an error that says what was looked up
    with pytest.raises(AgentError, match=r"route to 192\.0\.2\.1"):
        run_in_netns(f"/run/netns/{b}",
                     lambda: source_towards(ipaddress.IPv4Address("192.0.2.1")))
