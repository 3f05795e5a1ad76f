"""Per-pod runtime state shared by the listeners' handlers (outbound, inbound, plaintext).

Invariants:

* :class:`PodRuntime` owns the pod's netns fd until :meth:`PodRuntime.close_connections` and
  the pod manager closes it; handlers only borrow it.
* Every task a handler starts is in the pod's :class:`TaskSet` and every live splice in its
  ``splices`` set, so deleting the pod cancels and aborts all of them: nothing outlives the pod.
* The pod owns its proxy context (:class:`PodContext`, built by ``app.py`` for each pod): its
  connection tracker (``tracker``: labels and records of every connection, built once) and
  its HBONE pool (``pool``): every tunnel it opens starts in this pod's netns from
  this pod's IP, and no other pod's connection ever rides it, whatever identity the two pods
  share (the destination sees, authorizes and counts each pod by its own address). The pod
  manager closes the pool when the pod goes, after its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from meshapi.model import Workload
from ztunnel.conntrack import ConnTracker
from ztunnel.seams import StreamPool
from ztunnel.splice import Splice

log = logging.getLogger("ztunnel.pods")


class TaskSet:
    """Tasks owned by one pod (or one server): tracked, cancelled together, never forgotten."""

    def __init__(self, name: str, on_done: Callable[[], None] | None = None) -> None:
        self._name = name
        self._on_done = on_done
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._on_done is not None:
            self._on_done()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self._name, task.get_name(),
                      exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass(frozen=True, slots=True)
class PodContext:
    """What each pod gets of its own from the proxy: never shared with another pod."""

    pool: StreamPool
    tracker: ConnTracker


@dataclass(eq=False)
class PodRuntime:
    workload: Workload
    netns_fd: int
    #: this pod's own HBONE pool (set by the pod manager before any listener serves; None
    #: once the pod is gone)
    pool: StreamPool | None = None
    #: this pod's connection tracker
    tracker: ConnTracker | None = None
    tasks: TaskSet = field(init=False)
    splices: set[Splice] = field(default_factory=set)
    closing: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.tasks = TaskSet(f"pod {self.workload.uid}", self._changed.set)

    async def wait_idle(self) -> None:
        """Until the pod has no connection and no handler task left (drain)."""
        while self.splices or len(self.tasks):
            self._changed.clear()
            await self._changed.wait()

    @property
    def uid(self) -> str:
        return str(self.workload.uid)

    @property
    def ip(self) -> str:
        return str(self.workload.ip)

    def track(self, splice: Splice) -> None:
        self.splices.add(splice)

    def untrack(self, splice: Splice) -> None:
        self.splices.discard(splice)
        self._changed.set()

    async def close_connections(self, reason: str) -> None:
        self.closing = True
        await self.tasks.close()
        for splice in list(self.splices):
            splice.abort(reason)
        self.splices.clear()
