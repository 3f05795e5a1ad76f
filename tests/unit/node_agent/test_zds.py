"""The ZDS client against a fake ztunnel over a SOCK_SEQPACKET socketpair, incl. fd passing."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from meshapi import zds
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload
from node_agent.errors import ZdsError
from node_agent.zds import ZdsConnection, ZdsRejected


def workload(uid: str = "u1") -> Workload:
    return Workload(
        uid=PodUid(uid), name=f"pod-{uid}", namespace="default", service_account="default",
        identity=SpiffeId("cluster.local", "default", "default"), node=NodeName("node-1"),
        ip=ipaddress.IPv4Address("10.78.1.2"), enrolled=True, netns=f"/run/netns/{uid}",
    )


class FakeZtunnel:
    """The server side, driven step by step from the test (blocking socket in a thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def hello(self, *pods: str) -> None:
        self.sock.send(zds.encode(zds.Hello(tuple(pods))))

    async def recv(self) -> tuple[zds.Message, list[int]]:
        def body() -> tuple[zds.Message, list[int]]:
            data, fds, _, _ = socket.recv_fds(self.sock, zds.MAX_MESSAGE_BYTES, 4)
            return zds.decode(data), fds

        return await asyncio.to_thread(body)

    def ack(self, seq: int, error: str | None = None) -> None:
        self.sock.send(zds.encode(zds.Ack(seq, error)))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
async def conn_and_server(
    pair: tuple[socket.socket, socket.socket],
) -> AsyncIterator[tuple[ZdsConnection, FakeZtunnel]]:
    client, server = pair
    fake = FakeZtunnel(server)
    fake.hello("old")
    async with ZdsConnection(client, ack_timeout=2.0) as conn:
        yield conn, fake


async def test_hello_and_add_passes_the_netns_fd(
    conn_and_server: tuple[ZdsConnection, FakeZtunnel], tmp_path: os.PathLike[str]
) -> None:
    conn, fake = conn_and_server
    assert conn.hello.pods == ("old",)
    assert conn.served == {"old"}
    fd = os.open(os.path.join(tmp_path, "netns"), os.O_RDWR | os.O_CREAT)
    try:
        task = asyncio.create_task(conn.add(workload("u1"), fd))
        msg, fds = await fake.recv()
        assert isinstance(msg, zds.AddPod) and msg.workload == workload("u1")
        assert len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(fd).st_ino
        os.close(fds[0])
        fake.ack(msg.seq)
        await task
    finally:
        os.close(fd)
    assert conn.served == {"old", "u1"}


async def test_snapshot_drops_unmentioned(
    conn_and_server: tuple[ZdsConnection, FakeZtunnel],
) -> None:
    conn, fake = conn_and_server
    for call, kind in ((conn.keep("old"), zds.KeepPod), (conn.snapshot_complete(), None)):
        task = asyncio.create_task(call)
        msg, fds = await fake.recv()
        assert fds == []
        if kind is not None:
            assert isinstance(msg, kind)
        fake.ack(msg.seq)  # type: ignore[union-attr]
        await task
    assert conn.served == {"old"}

    task = asyncio.create_task(conn.delete("old"))
    msg, _ = await fake.recv()
    assert isinstance(msg, zds.DeletePod) and msg.uid == "old"
    fake.ack(msg.seq)
    await task
    assert conn.served == set()


async def test_rejected_request_keeps_the_connection(
    conn_and_server: tuple[ZdsConnection, FakeZtunnel],
) -> None:
    conn, fake = conn_and_server
    task = asyncio.create_task(conn.keep("x"))
    msg, _ = await fake.recv()
    fake.ack(msg.seq, "no such pod")  # type: ignore[union-attr]
    with pytest.raises(ZdsRejected, match="no such pod"):
        await task
    assert not conn.closed.is_set()


async def test_ztunnel_going_away_fails_the_waiter(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    fake = FakeZtunnel(server)
    fake.hello()
    closed: list[bool] = []
    async with ZdsConnection(client, ack_timeout=2.0, on_close=lambda: closed.append(True)) as conn:
        task = asyncio.create_task(conn.keep("a"))
        await fake.recv()
        server.shutdown(socket.SHUT_RDWR)
        with pytest.raises(ZdsError, match="closed"):
            await task
        await conn.closed.wait()
    assert closed == [True]


async def test_missing_ack_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    FakeZtunnel(server).hello()
    async with ZdsConnection(client, ack_timeout=0.05) as conn:
        with pytest.raises(ZdsError, match="did not acknowledge"):
            await conn.keep("a")
        assert conn.closed.is_set()


async def test_bad_hello_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.send(zds.encode(zds.Ack(1)))
    with pytest.raises(ZdsError, match="expected hello"):
        async with ZdsConnection(client, ack_timeout=1.0):
            pass


async def test_connect_to_missing_socket(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ZdsError, match="is it running"):
        await ZdsConnection.connect(os.path.join(tmp_path, "nope.sock"))


async def test_add_tells_the_ztunnel_the_redirection_mode(
    pair: tuple[socket.socket, socket.socket], tmp_path: os.PathLike[str]
) -> None:
    client, server = pair
    fake = FakeZtunnel(server)
    fake.hello()
    fd = os.open(os.path.join(tmp_path, "netns"), os.O_RDWR | os.O_CREAT)
    try:
        async with ZdsConnection(client, ack_timeout=2.0, redirection="ebpf") as conn:
            task = asyncio.create_task(conn.add(workload("u1"), fd))
            msg, fds = await fake.recv()
            for f in fds:
                os.close(f)
            assert isinstance(msg, zds.AddPod) and msg.redirection == "ebpf"
            fake.ack(msg.seq)
            await task
    finally:
        os.close(fd)
    # the wire form round-trips, and an agent that says nothing decodes as None
    assert zds.decode(zds.encode(zds.AddPod(3, workload(), "ebpf"))) == zds.AddPod(
        3, workload(), "ebpf")
    assert zds.decode(zds.encode(zds.AddPod(3, workload()))).redirection is None


DEEP = b'{"type": "ack", "seq": 1, "error": ' + b"[" * 30000 + b"]" * 30000 + b"}"


async def test_deeply_nested_hello_is_a_zds_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    server.send(DEEP)
    with pytest.raises(ZdsError, match="bad hello"):  # was RecursionError
        async with ZdsConnection(client, ack_timeout=1.0):
            pass


async def test_deeply_nested_ack_closes_the_connection_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # the reader died of RecursionError: the waiter hung until its timeout, and __aexit__
    # re-raised the RecursionError
    client, server = pair
    fake = FakeZtunnel(server)
    fake.hello()
    async with ZdsConnection(client, ack_timeout=30.0) as conn:
        task = asyncio.create_task(conn.keep("a"))
        await fake.recv()
        server.send(DEEP)
        with pytest.raises(ZdsError, match="malformed message from the ztunnel"):
            async with asyncio.timeout(5):
                await task
        assert conn.closed.is_set()
