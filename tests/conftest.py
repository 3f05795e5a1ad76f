"""Fixtures shared by every tier.

* ``no_leaked_tasks`` (autouse): an async test that leaves asyncio tasks running fails.
* ``require_root``: tiers that need root fail loudly (never skip) when not root: CI runs as root.
* Every async test runs twice, on asyncio's loop and on uvloop: the processes run on uvloop, and
  the two differ in ways that matter to a proxy (uvloop starts reading an accepted socket right
  after ``connection_made`` even when the protocol paused it there; its transports do not
  subclass ``asyncio.Transport``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    # give cancelled tasks one loop turn to finish
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [
        t for t in asyncio.all_tasks() - before if t is not current and not t.done()
    ]
    for t in leaked:
        t.cancel()
    if leaked:
        pytest.fail(f"test leaked {len(leaked)} asyncio task(s): {[t.get_name() for t in leaked]}")


@pytest.fixture
def require_root() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, iptables); run it as root")
    yield
