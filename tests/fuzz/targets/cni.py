"""Fuzz targets of the agent's end of the CNI plugin (:mod:`node_agent.cni`).

* ``cni.request``: one request frame through :func:`protocol.parse_request`; only
  :class:`CniRequestError` escapes (with a CNI code and a message), and for an ADD the result
  the agent would print is strict JSON (no ``Infinity`` from a ``1e999`` in the prevResult).
* ``cni.server``: the same bytes as one connection's request to :class:`CniServer` (its
  request reader and dispatcher on a real loop, a backend that accepts everything): no
  exception, exactly one response frame (``NODEMESH-CNI 1 <code>``), a DEL always succeeds,
  a failure's stdout is a CNI error object.
"""

from __future__ import annotations

import asyncio

from meshapi import wire
from node_agent.cni import protocol
from node_agent.cni.errors import CniRequestError
from node_agent.cni.protocol import AddRequest, CheckRequest, Command, DelRequest
from node_agent.cni.server import CniServer
from node_agent.metrics import AgentMetrics
from tests.fuzz.harness import target

#: the request is at most 1 MiB + headers; hypothesis' inputs are far smaller
_MAX_BYTES = 4 * 1024 * 1024


@target("cni.request", max_bytes=_MAX_BYTES)
def cni_request(data: bytes) -> None:
    try:
        envelope = protocol.parse_request(data)
    except CniRequestError as exc:
        assert exc.msg and 1 <= exc.code <= 999
        return
    if envelope.command is Command.ADD:
        assert envelope.prev_result is not None
        out = protocol.success_output(envelope.cni_version, envelope.prev_result)
        assert isinstance(wire.loads(out), dict)


class _Backend:
    async def add(self, req: AddRequest) -> None:
        return None

    async def delete(self, req: DelRequest) -> None:
        return None

    async def check(self, req: CheckRequest) -> None:
        return None


_METRICS = AgentMetrics()


async def _answer(data: bytes) -> tuple[str | None, str, bytes]:
    server = CniServer("/nonexistent/cni.sock", _Backend(), metrics=_METRICS, read_timeout=5.0)
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await server._answer(reader)


@target("cni.server", deadline=5.0, max_bytes=_MAX_BYTES)
def cni_server(data: bytes) -> None:
    command, result, frame = asyncio.run(_answer(data))
    head, _, stdout = frame.partition(b"\n")
    assert head.startswith(protocol.MAGIC + b" ")
    code = int(head.removeprefix(protocol.MAGIC + b" "))
    assert result in ("ok", "failed", "invalid")
    if command == Command.DEL.value:
        assert code == 0, "a DEL must always succeed"
    if code != 0:
        error = wire.loads(stdout)
        assert isinstance(error, dict) and isinstance(error.get("msg"), str)
    elif stdout:
        assert isinstance(wire.loads(stdout), dict)
