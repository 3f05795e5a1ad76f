"""The ztunnel runs on uvloop in production (app.py); its root tests run on both loops, because
they differ in ways that matter to a proxy (uvloop starts reading an accepted socket right after
``connection_made`` even when the protocol paused it there)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
