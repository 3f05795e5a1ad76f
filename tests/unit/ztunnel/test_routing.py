from __future__ import annotations

import pytest

from tests.unit.ztunnel.helpers import service, workload
from ztunnel.routing import MeshIndex, Passthrough, Refuse, RoundRobin, ViaHbone, decide

CLIENT = workload("client", "10.78.1.2")
SERVER = workload("server", "10.78.1.3")
SERVER2 = workload("server2", "10.78.2.3")
PLAIN = workload("legacy", "10.78.1.9", enrolled=False)
SVC = service("server", "10.96.0.10", [(80, 8080)], [SERVER, SERVER2])
MIXED = service("mixed", "10.96.0.11", [(80, 8080)], [PLAIN])
EMPTY = service("empty", "10.96.0.12", [(80, 8080)], [])

INDEX = MeshIndex.build(
    {w.key: w for w in (CLIENT, SERVER, SERVER2, PLAIN)},
    {s.key: s for s in (SVC, MIXED, EMPTY)},
)

CASES = [
    # (name, destination, pick index, expected)
    ("enrolled pod ip", ("10.78.1.3", 8080), 0, ViaHbone(SERVER, ("10.78.1.3", 8080))),
    ("vip → first endpoint, targetPort", ("10.96.0.10", 80), 0,
     ViaHbone(SERVER, ("10.78.1.3", 8080), SVC)),
    ("vip → second endpoint", ("10.96.0.10", 80), 1, ViaHbone(SERVER2, ("10.78.2.3", 8080), SVC)),
    ("vip pick wraps", ("10.96.0.10", 80), 3, ViaHbone(SERVER2, ("10.78.2.3", 8080), SVC)),
    ("vip unknown port", ("10.96.0.10", 81), 0, Refuse("unknown_service_port")),
    ("vip no endpoints", ("10.96.0.12", 80), 0, Refuse("no_endpoints")),
    ("vip → unenrolled endpoint", ("10.96.0.11", 80), 0,
     Passthrough(("10.78.1.9", 8080), PLAIN, MIXED)),
    ("unenrolled pod", ("10.78.1.9", 5000), 0, Passthrough(("10.78.1.9", 5000), PLAIN)),
    ("outside the mesh", ("1.1.1.1", 443), 0, Passthrough(("1.1.1.1", 443))),
    ("own outbound listener", ("10.78.1.2", 15001), 0, Refuse("loop")),
    ("own hbone listener", ("10.78.1.2", 15008), 0, Refuse("loop")),
    ("loopback 15006", ("127.0.0.1", 15006), 0, Refuse("loop")),
    ("own ip, app port", ("10.78.1.2", 8080), 0, ViaHbone(CLIENT, ("10.78.1.2", 8080))),
]


@pytest.mark.parametrize(("dst", "pick", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decide(dst: tuple[str, int], pick: int, expected: object) -> None:
    got = decide(INDEX, CLIENT, dst, lambda n: pick)
    if isinstance(expected, Refuse):
        assert isinstance(got, Refuse)
        assert got.reason == expected.reason
    else:
        assert got == expected


def test_hbone_peer_and_authority() -> None:
    got = decide(INDEX, CLIENT, ("10.96.0.10", 80), lambda n: 0)
    assert isinstance(got, ViaHbone)
    assert got.peer == ("10.78.1.3", 15008)
    assert got.authority == "10.78.1.3:8080"


def test_round_robin_spreads() -> None:
    rr = RoundRobin()
    picks = [decide(INDEX, CLIENT, ("10.96.0.10", 80), rr) for _ in range(4)]
    targets = [p.target for p in picks if isinstance(p, ViaHbone)]
    assert targets == [("10.78.1.3", 8080), ("10.78.2.3", 8080)] * 2
