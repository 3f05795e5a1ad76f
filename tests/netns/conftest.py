"""Root-tier fixtures: real network namespaces, always removed by name, even when a test fails.

``netns_factory(suffix)`` creates ``nmt-<testid>-<suffix>`` with ``lo`` up and returns its name;
``veth_pair(ns_a, ns_b, ip_a, ip_b[, dev_b])`` links two of them on a /24 (``eth0`` on each
side, or ``dev_b`` on the second when it gets several links).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

_counter = itertools.count()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(autouse=True)
def _root(require_root: None) -> None:
    return None


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    created: list[str] = []
    base = f"nmt-{os.getpid() % 10000}-{next(_counter)}"

    def make(suffix: str) -> str:
        name = f"{base}-{suffix}"
        ip("netns", "add", name)
        created.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(created):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


_veth_counter = itertools.count()


@pytest.fixture
def veth_pair() -> Iterator[Callable[..., None]]:
    """Connect two namespaces: ``eth0`` in each (or ``dev_b`` in the second), addresses given
    as ``a.b.c.d/24``."""
    def make(ns_a: str, ns_b: str, ip_a: str, ip_b: str, dev_b: str = "eth0") -> None:
        n = next(_veth_counter)
        a, b = f"nmt{os.getpid() % 1000}a{n}", f"nmt{os.getpid() % 1000}b{n}"
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", a, "netns", ns_a)
        ip("link", "set", b, "netns", ns_b)
        for ns, dev, addr, name in ((ns_a, a, ip_a, "eth0"), (ns_b, b, ip_b, dev_b)):
            ip("-n", ns, "link", "set", dev, "name", name)
            ip("-n", ns, "addr", "add", addr, "dev", name)
            ip("-n", ns, "link", "set", name, "up")

    yield make  # veths die with their namespaces
