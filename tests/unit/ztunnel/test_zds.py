from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from meshapi import zds
from meshapi.model import Workload
from tests.unit.ztunnel.helpers import workload
from ztunnel.errors import PodError
from ztunnel.metrics import Metrics
from ztunnel.zds import TRUNCATED, ZdsServer, ZdsSession, recv_packet

POD_A = workload("a", "10.78.1.2")
POD_B = workload("b", "10.78.1.3")


class FakePods:
    def __init__(self, served: list[str] | None = None, fail_add: bool = False) -> None:
        self.pods: dict[str, int] = dict.fromkeys(served or [], -1)
        self.fail_add = fail_add
        self.log: list[str] = []

    def served(self) -> list[str]:
        return sorted(self.pods)

    async def add(
        self, workload: Workload, netns_fd: int, redirection: str = "iptables"
    ) -> None:
        if self.fail_add:
            os.close(netns_fd)
            raise PodError("listeners failed")
        old = self.pods.get(workload.uid)
        if old is not None and old >= 0:
            os.close(old)
        self.pods[workload.uid] = netns_fd
        self.log.append(f"add {workload.uid}")

    def keep(self, uid: str) -> None:
        if uid not in self.pods:
            raise PodError(f"pod {uid} is not served")
        self.log.append(f"keep {uid}")

    async def delete(self, uid: str) -> bool:
        fd = self.pods.pop(uid, None)
        if fd is not None and fd >= 0:
            os.close(fd)
        self.log.append(f"delete {uid}")
        return fd is not None

    async def retain_only(self, uids: set[str]) -> list[str]:
        dropped = [u for u in self.served() if u not in uids]
        for uid in dropped:
            await self.delete(uid)
        return dropped

    def close(self) -> None:
        for fd in self.pods.values():
            if fd >= 0:
                os.close(fd)


def netns_fd() -> int:
    return os.open("/proc/self/ns/net", os.O_RDONLY)


def ack(data: bytes) -> zds.Ack:
    msg = zds.decode(data)
    assert isinstance(msg, zds.Ack)
    return msg


def errors(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("nodemesh_ztunnel_zds_errors_total",
                                              {"reason": reason})
    return value or 0.0


async def test_hello_lists_served_pods() -> None:
    session = ZdsSession(FakePods(["x", "y"]), Metrics())
    assert zds.decode(session.hello()) == zds.Hello(("x", "y"))


async def test_add_keep_delete_snapshot() -> None:
    pods = FakePods(["stale"])
    session = ZdsSession(pods, Metrics(), node="node-1")
    assert ack(await session.handle(zds.encode(zds.AddPod(1, POD_A)), [netns_fd()])).error is None
    assert ack(await session.handle(zds.encode(zds.AddPod(2, POD_B)), [netns_fd()])).error is None
    assert ack(await session.handle(zds.encode(zds.KeepPod(3, POD_A.uid)), [])).error is None
    assert ack(await session.handle(zds.encode(zds.DeletePod(4, POD_B.uid)), [])).error is None
    assert ack(await session.handle(zds.encode(zds.SnapshotComplete(5)), [])) == zds.Ack(5)
    assert pods.served() == [POD_A.uid]
    assert pods.log[-1] == "delete stale"
    pods.close()


@pytest.mark.parametrize(
    ("data", "fds", "reason", "seq"),
    [
        (b"not json", 0, "malformed", 0),
        (b'{"type":"add","seq":7,"workload":{"uid":"x"}}', 1, "malformed", 7),
        (zds.encode(zds.Hello(())), 0, "unexpected", 0),
        (zds.encode(zds.AddPod(3, POD_A)), 0, "missing_fd", 3),
        (zds.encode(zds.AddPod(3, POD_A)), 2, "missing_fd", 3),
        (zds.encode(zds.KeepPod(4, "nope")), 0, "unknown_pod", 4),
        (zds.encode(zds.KeepPod(4, "nope")), 1, "unexpected_fd", 4),
        (zds.encode(zds.AddPod(5, workload("c", "10.0.0.1", node="node-2"))), 1, "wrong_node", 5),
        (b"x" * (zds.MAX_MESSAGE_BYTES + 1), 0, "malformed", 0),
    ],
)
async def test_bad_messages_get_error_ack_and_are_counted(
    data: bytes, fds: int, reason: str, seq: int
) -> None:
    metrics = Metrics()
    pods = FakePods()
    session = ZdsSession(pods, metrics, node="node-1")
    passed = [netns_fd() for _ in range(fds)]
    reply = ack(await session.handle(data, passed))
    assert reply.seq == seq
    assert reply.error
    assert errors(metrics, reason) == 1
    assert pods.served() == []
    for fd in passed:  # every fd was closed by the session
        with pytest.raises(OSError):
            os.fstat(fd)


async def test_add_with_a_non_netns_fd_is_refused() -> None:
    metrics = Metrics()
    r, w = os.pipe()
    os.close(w)
    reply = ack(await ZdsSession(FakePods(), metrics).handle(zds.encode(zds.AddPod(1, POD_A)),
                                                             [r]))
    assert reply.error and "not a netns" in reply.error
    assert errors(metrics, "bad_fd") == 1


async def test_failed_add_is_an_error_ack() -> None:
    metrics = Metrics()
    reply = ack(await ZdsSession(FakePods(fail_add=True), metrics).handle(
        zds.encode(zds.AddPod(1, POD_A)), [netns_fd()]))
    assert reply.error == "listeners failed"
    assert errors(metrics, "add_failed") == 1


async def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return sock


async def _request(sock: socket.socket, msg: zds.Message, fds: list[int] | None = None) -> bytes:
    socket.send_fds(sock, [zds.encode(msg)], fds or [])
    async with asyncio.timeout(5):
        data, _ = await recv_packet(sock)
    return data


async def test_server_over_a_real_socket_replaces_the_old_agent(tmp_path: Path) -> None:
    path = tmp_path / "ztunnel.sock"
    pods = FakePods()
    server = ZdsServer(path, pods, Metrics())
    task = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(5):
            await server.listening.wait()
        first = await _connect(path)
        async with asyncio.timeout(5):
            hello, _ = await recv_packet(first)
        assert zds.decode(hello) == zds.Hello(())
        fd = netns_fd()
        assert ack(await _request(first, zds.AddPod(1, POD_A), [fd])).error is None
        os.close(fd)  # our copy; the server keeps its own
        second = await _connect(path)
        async with asyncio.timeout(5):
            hello, _ = await recv_packet(second)
        assert zds.decode(hello) == zds.Hello((POD_A.uid,))
        async with asyncio.timeout(5):  # the first connection was closed by the server
            data, _ = await recv_packet(first)
        assert data == b""
        assert ack(await _request(second, zds.KeepPod(1, POD_A.uid))).error is None
        assert ack(await _request(second, zds.SnapshotComplete(2))).error is None
        assert pods.served() == [POD_A.uid]
        second.close()
        first.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pods.close()
    assert not path.exists()
    assert json.loads(hello)["type"] == "hello"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        # the ack carried the seq back and the agent could not decode it: connection dropped
        (b'{"type": "keep", "seq": 1' + b"0" * 30 + b', "uid": "a"}', "out of range"),
        (b'{"type": "keep", "seq": 3, "uid": ' + b"[" * 30000 + b"]" * 30000 + b"}", "nested"),
        (TRUNCATED, "truncated"),
    ],
    ids=["seq-out-of-range", "deep-nesting", "truncated"],
)
async def test_hostile_messages_get_an_ack_the_agent_can_decode(
    data: bytes, fragment: str
) -> None:
    metrics = Metrics()
    session = ZdsSession(FakePods(), metrics, node="node-1")
    reply = ack(await session.handle(data, []))  # decodes: seq within range
    assert reply.seq == 0 and reply.error is not None and fragment in reply.error
    assert errors(metrics, "malformed") == 1
