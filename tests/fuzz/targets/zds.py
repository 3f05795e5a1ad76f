"""Fuzz targets of the agent ↔ ztunnel protocol (ZDS, :mod:`meshapi.zds`).

* ``zds.decode``: one packet through :func:`meshapi.zds.decode`; only :class:`WireError`
  escapes, and a message that decodes encodes back to the same message.
* ``zds.session``: one packet through the ztunnel's :class:`ZdsSession` (fake pod sink, no fd):
  no exception, the answer is always an ``ack`` that decodes, its ``seq`` is the message's when
  the message decoded, no pod is added without its netns fd.
* ``zds.client``: one packet as the agent's :class:`ZdsConnection` reads it from the ztunnel
  (the hello, then an ack): the hello either succeeds or raises :class:`ZdsError`; the reader
  task never dies of anything else, and it marks the connection closed on garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from meshapi import zds
from meshapi.errors import WireError
from meshapi.model import Workload
from node_agent.errors import ZdsError
from node_agent.zds import ZdsConnection
from tests.fuzz.harness import target
from ztunnel.errors import PodError
from ztunnel.metrics import Metrics
from ztunnel.zds import ZdsSession, _seq_of

#: a packet is at most 64 KiB; decoding it may cost a few times that
_MAX_BYTES = 4 * 1024 * 1024


@target("zds.decode", max_bytes=_MAX_BYTES)
def zds_decode(data: bytes) -> None:
    try:
        message = zds.decode(data)
    except WireError:
        return
    assert isinstance(message, zds.Hello | zds.AddPod | zds.KeepPod | zds.DeletePod
                      | zds.SnapshotComplete | zds.Ack)
    try:
        again = zds.encode(message)
    except WireError as exc:
        assert "exceeds" in str(exc)  # escapes made it longer than a packet
        return
    assert zds.decode(again) == message


class _Pods:
    def __init__(self) -> None:
        self.uids = {"uid-a"}

    def served(self) -> list[str]:
        return sorted(self.uids)

    async def add(self, workload: Workload, netns_fd: int, redirection: str = "iptables") -> None:
        raise AssertionError("added a pod without a netns fd")

    def keep(self, uid: str) -> None:
        if uid not in self.uids:
            raise PodError(f"pod {uid} is not served")

    async def delete(self, uid: str) -> bool:
        return self.uids.discard(uid) is None

    async def retain_only(self, uids: set[str]) -> list[str]:
        dropped = sorted(self.uids - uids)
        self.uids &= uids
        return dropped


_METRICS = Metrics()


@target("zds.session", max_bytes=_MAX_BYTES)
def zds_session(data: bytes) -> None:
    seq = _seq_of(data)
    assert isinstance(seq, int) and seq >= 0
    session = ZdsSession(_Pods(), _METRICS, node="node-1")
    ack = asyncio.run(session.handle(data, []))
    answer = zds.decode(ack)
    assert isinstance(answer, zds.Ack)
    with contextlib.suppress(WireError):
        message = zds.decode(data)
        if not isinstance(message, zds.Hello | zds.Ack):
            assert answer.seq == message.seq


_HELLO = zds.encode(zds.Hello(("uid-a",)))


async def _client(data: bytes) -> None:
    # the ztunnel's first packet is ``data`` (as the hello) and then, after a valid hello,
    # ``data`` again as the answer to a keep
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        theirs.send(data if data else b" ")
        conn = ZdsConnection(ours, ack_timeout=2.0)
        try:
            await conn.__aenter__()
        except ZdsError:
            return
        try:
            theirs.send(data if data else b" ")
            with contextlib.suppress(ZdsError):
                await conn.keep("uid-a")
        finally:
            await conn.__aexit__(None, None, None)
            assert conn.closed.is_set()
    finally:
        theirs.close()
        ours.close()


@target("zds.client", deadline=5.0, max_bytes=_MAX_BYTES)
def zds_client(data: bytes) -> None:
    asyncio.run(_client(data))
