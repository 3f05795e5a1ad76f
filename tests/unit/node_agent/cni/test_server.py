"""The CNI server over a real Unix socket, with a fake backend."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.cni.errors import CniCode, CniFailure, CniServerError
from node_agent.cni.protocol import AddRequest, DelRequest
from node_agent.cni.server import CniServer
from node_agent.metrics import AgentMetrics

from .helpers import PREV_RESULT, FakeBackend, cni_env, config, frame


async def call(path: str, data: bytes, *, eof: bool = True) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    header, _, body = raw.partition(b"\n")
    assert header.startswith(b"NODEMESH-CNI 1 "), raw
    return int(header.split()[-1]), body


def exists(path: str) -> bool:
    return os.path.exists(path)


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def read(path: str) -> str:
    return Path(path).read_text()


def error_of(body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(body)
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    return out


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "cni.sock")


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def server(sock_path: str, backend: FakeBackend) -> AsyncIterator[CniServer]:
    srv = CniServer(sock_path, backend, read_timeout=0.5, backend_timeout=5, drain_timeout=5)
    async with srv:
        yield srv


async def test_add_returns_prev_result(server: CniServer, backend: FakeBackend) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    code, body = await call(server.path, frame(cni_env("ADD"), config("0.4.0")))
    assert code == 0
    assert json.loads(body) == {**PREV_RESULT, "cniVersion": "0.4.0"}
    [req] = backend.calls
    assert isinstance(req, AddRequest) and req.pod_name == "web-0"


async def test_del_check_status_output_nothing(server: CniServer, backend: FakeBackend) -> None:
    for command in ("DEL", "CHECK"):
        assert await call(server.path, frame(cni_env(command), config())) == (0, b"")
    assert await call(server.path, frame({"CNI_COMMAND": "STATUS"}, config(prev=None))) == (0, b"")
    assert [type(c).__name__ for c in backend.calls] == ["DelRequest", "CheckRequest"]
    assert server.counts == {("DEL", "ok"): 1, ("CHECK", "ok"): 1, ("STATUS", "ok"): 1}


async def test_backend_failure_becomes_cni_error(server: CniServer, backend: FakeBackend) -> None:
    backend.fail = CniFailure("cannot redirect shop/web-0: ztunnel down", "check the ztunnel", 105)
    code, body = await call(server.path, frame(cni_env(), config("1.1.0")))
    assert code == 1 and server.counts == {("ADD", "failed"): 1}
    assert error_of(body) == {
        "cniVersion": "1.1.0",
        "code": 105,
        "msg": "cannot redirect shop/web-0: ztunnel down",
        "details": "check the ztunnel",
    }


async def test_backend_bug_becomes_cni_error(server: CniServer, backend: FakeBackend) -> None:
    backend.fail = KeyError("pods")
    code, body = await call(server.path, frame(cni_env(), config()))
    err = error_of(body)
    assert code == 1 and err["code"] == CniCode.AGENT_INTERNAL
    assert err["msg"] == (
        "nodemesh node agent failed on ADD of pod shop/web-0 (container 3f6940ab5ab4): "
        "KeyError: 'pods'"
    )


async def test_backend_timeout(sock_path: str, backend: FakeBackend) -> None:
    backend.gate = asyncio.Event()  # never set: the backend hangs
    async with CniServer(sock_path, backend, backend_timeout=0.2):
        code, body = await call(sock_path, frame(cni_env(), config()))
    err = error_of(body)
    assert code == 1 and err["code"] == CniCode.TRY_AGAIN_LATER
    assert "did not finish within 0.2 s; the kubelet will retry" in err["msg"]


async def test_backend_own_timeout_is_a_bug(server: CniServer, backend: FakeBackend) -> None:
    backend.fail = TimeoutError("netlink")
    _, body = await call(server.path, frame(cni_env(), config()))
    assert error_of(body)["code"] == CniCode.AGENT_INTERNAL


async def test_malformed_request(server: CniServer, backend: FakeBackend) -> None:
    code, body = await call(server.path, b"GET / HTTP/1.1\r\n\r\n")
    err = error_of(body)
    assert code == 1 and err["code"] == CniCode.AGENT_PROTOCOL
    assert "not a nodemesh CNI request" in err["msg"]
    code, body = await call(server.path, frame(cni_env(), b"{garbage"))
    assert code == 1 and error_of(body)["code"] == CniCode.DECODING_FAILURE
    assert backend.calls == []
    assert server.counts == {("unknown", "invalid"): 1, ("ADD", "invalid"): 1}


async def test_invalid_del_succeeds(server: CniServer, backend: FakeBackend) -> None:
    assert await call(server.path, frame(cni_env("DEL", CNI_ARGS=""), config())) == (0, b"")
    assert await call(server.path, frame(cni_env("DEL"), b"garbage")) == (0, b"")
    assert backend.calls == []


async def test_deeply_nested_config_is_answered(server: CniServer, backend: FakeBackend) -> None:
    # json raised RecursionError past the handler: no response frame, the plugin saw EOF
    deep = b'{"cniVersion": "1.0.0", "x": ' + b"[" * 50000 + b"]" * 50000 + b"}"
    code, body = await call(server.path, frame(cni_env(), deep))
    assert code == 1 and error_of(body)["code"] == CniCode.DECODING_FAILURE
    assert "nested deeper" in error_of(body)["msg"]
    assert await call(server.path, frame(cni_env("DEL"), deep)) == (0, b"")
    assert backend.calls == []


async def test_oversized_request(sock_path: str, backend: FakeBackend) -> None:
    async with CniServer(sock_path, backend, max_request_bytes=4096):
        code, body = await call(sock_path, frame(cni_env(), config(pad="x" * 10000)))
    err = error_of(body)
    assert code == 1 and err["code"] == CniCode.INVALID_CONFIG
    assert "larger than the 4096 byte limit" in err["msg"]
    assert backend.calls == []


async def test_slow_client_times_out(server: CniServer, backend: FakeBackend) -> None:
    # half a request and no shutdown(SHUT_WR): the server answers after read_timeout
    code, body = await call(server.path, frame(cni_env(), config())[:50], eof=False)
    err = error_of(body)
    assert code == 1 and "request not complete after 0.5 s (50 bytes read)" in err["msg"]
    assert backend.calls == []


async def test_client_gone_does_not_break_server(server: CniServer, backend: FakeBackend) -> None:
    backend.gate = asyncio.Event()
    _, writer = await asyncio.open_unix_connection(server.path)
    writer.write(frame(cni_env(), config()))
    writer.write_eof()
    await backend.entered.wait()
    writer.close()
    await writer.wait_closed()
    backend.gate.set()
    await backend.finished.wait()
    backend.gate = None
    code, _ = await call(server.path, frame(cni_env("DEL"), config()))
    assert code == 0 and len(backend.calls) == 2


async def test_drain_waits_for_running_requests(sock_path: str, backend: FakeBackend) -> None:
    backend.gate = asyncio.Event()
    srv = CniServer(sock_path, backend, drain_timeout=10)
    await srv.start()
    pending = asyncio.create_task(call(sock_path, frame(cni_env(), config())))
    await backend.entered.wait()
    closing = asyncio.create_task(srv.close())
    await asyncio.sleep(0)  # close() runs up to its first await
    # closing stops accepting at once: the socket file is gone while the request still runs
    assert not exists(sock_path)
    assert not closing.done() and not pending.done()
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        await asyncio.open_unix_connection(sock_path)
    backend.gate.set()
    code, body = await pending
    await closing
    assert code == 0 and json.loads(body)["ips"] == PREV_RESULT["ips"]
    assert srv.active_connections == 0


async def test_drain_timeout_cancels_stuck_requests(sock_path: str, backend: FakeBackend) -> None:
    backend.gate = asyncio.Event()
    srv = CniServer(sock_path, backend, drain_timeout=0.1)
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(frame(cni_env(), config()))
    writer.write_eof()
    await backend.entered.wait()
    await srv.close()
    assert await reader.read() == b""  # cancelled: no answer, the plugin reports it
    writer.close()
    await writer.wait_closed()
    assert backend.finished.is_set() and srv.active_connections == 0


async def test_connection_limit_queues_in_backlog(sock_path: str, backend: FakeBackend) -> None:
    backend.gate = asyncio.Event()
    async with CniServer(sock_path, backend, max_connections=1):
        first = asyncio.create_task(call(sock_path, frame(cni_env(), config())))
        await backend.entered.wait()
        second = asyncio.create_task(call(sock_path, frame(cni_env("DEL"), config())))
        # the second connection waits in the listen backlog, its request not read
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert len(backend.calls) == 1 and not second.done()
        backend.gate.set()
        assert (await first)[0] == 0
        assert await second == (0, b"")
    assert isinstance(backend.calls[1], DelRequest)


async def test_stale_socket_replaced_live_refused(sock_path: str, backend: FakeBackend) -> None:
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens
    async with CniServer(sock_path, backend) as srv:
        assert (await call(sock_path, frame(cni_env("DEL"), config())))[0] == 0
        with pytest.raises(CniServerError, match="another process serves"):
            await CniServer(sock_path, backend).start()
        assert exists(sock_path)  # the refused one did not remove ours
    assert not exists(sock_path)
    assert srv.active_connections == 0


async def test_non_socket_file_is_not_replaced(sock_path: str, backend: FakeBackend) -> None:
    os.makedirs(os.path.dirname(sock_path))
    write(sock_path, "keep me")
    with pytest.raises(CniServerError, match="exists and is not a socket"):
        await CniServer(sock_path, backend).start()
    assert read(sock_path) == "keep me"


async def test_close_leaves_a_newer_socket_alone(sock_path: str, backend: FakeBackend) -> None:
    srv = CniServer(sock_path, backend)
    await srv.start()
    os.unlink(sock_path)
    newer = socket.socket(socket.AF_UNIX)
    newer.bind(sock_path)
    try:
        await srv.close()
        assert exists(sock_path)
    finally:
        newer.close()


async def test_serve_until_stop(sock_path: str, backend: FakeBackend) -> None:
    stop = asyncio.Event()
    srv = CniServer(sock_path, backend)
    task = asyncio.create_task(srv.serve(stop))
    await srv.ready.wait()
    assert (await call(sock_path, frame(cni_env("CHECK"), config())))[0] == 0
    stop.set()
    await task
    assert not exists(sock_path) and not srv.ready.is_set()


async def test_status_not_ready(sock_path: str, backend: FakeBackend) -> None:
    reason: list[str | None] = ["ztunnel not connected"]
    async with CniServer(sock_path, backend, not_ready=lambda: reason[0]):
        status = frame({"CNI_COMMAND": "STATUS"}, config("1.1.0", prev=None))
        code, body = await call(sock_path, status)
        assert code == 1
        assert error_of(body) == {
            "cniVersion": "1.1.0",
            "code": CniCode.NOT_AVAILABLE,
            "msg": "nodemesh node agent is not ready to add pods: ztunnel not connected",
            "details": "check the node agent's log",
        }
        reason[0] = None
        assert await call(sock_path, status) == (0, b"")


# ---- metrics, read through the agent's registry as the ztunnel scrapes it -----------------------


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_requests_counted_and_timed_in_the_registry(
    sock_path: str, backend: FakeBackend
) -> None:
    metrics = AgentMetrics()
    async with CniServer(sock_path, backend, read_timeout=0.5, metrics=metrics) as srv:
        # every command's series exists before the first request (rates work from the start)
        for command in ("ADD", "DEL", "CHECK", "STATUS"):
            for result in ("ok", "failed", "invalid"):
                assert sample(metrics, "nodemesh_agent_cni_requests_total",
                              command=command, result=result) == 0
            assert sample(metrics, "nodemesh_agent_cni_request_duration_seconds_count",
                          command=command) == 0
        # an ADD held 300 ms in the backend is timed from accept to answer
        backend.gate = asyncio.Event()
        add = asyncio.create_task(call(sock_path, frame(cni_env("ADD"), config())))
        await backend.entered.wait()
        await asyncio.sleep(0.3)
        backend.gate.set()
        assert (await add)[0] == 0
        backend.gate = None
        backend.fail = CniFailure("ztunnel down", "check it", CniCode.REDIRECTION_FAILED)
        assert (await call(sock_path, frame(cni_env("ADD"), config())))[0] == 1
        backend.fail = None
        assert (await call(sock_path, frame(cni_env("DEL"), b"garbage")))[0] == 0
        assert (await call(sock_path, frame(cni_env("FOO"), config())))[0] == 1
        assert (await call(sock_path, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == 1

    def requests(command: str, result: str) -> float | None:
        return sample(metrics, "nodemesh_agent_cni_requests_total",
                      command=command, result=result)

    assert requests("ADD", "ok") == 1 and requests("ADD", "failed") == 1
    assert requests("DEL", "invalid") == 1 and requests("DEL", "ok") == 0
    # a command the plugin never sends is not a label value of its own: labels stay bounded
    assert requests("unknown", "invalid") == 2 and requests("FOO", "invalid") is None
    # CniServer.counts is a view of the same counter
    assert srv.counts == {
        ("ADD", "ok"): 1, ("ADD", "failed"): 1, ("DEL", "invalid"): 1, ("unknown", "invalid"): 2,
    }

    def duration(command: str, suffix: str, **extra: str) -> float | None:
        return sample(metrics, f"nodemesh_agent_cni_request_duration_seconds_{suffix}",
                      command=command, **extra)

    assert duration("ADD", "count") == 2
    assert (duration("ADD", "sum") or 0) >= 0.3
    # the held ADD is above 250 ms, the failed one (answered at once) below it
    assert duration("ADD", "bucket", le="0.25") == 1
    assert duration("ADD", "bucket", le="0.5") == 2
    assert duration("ADD", "bucket", le="+Inf") == 2
    assert duration("unknown", "count") == 2 and duration("DEL", "count") == 1
    assert duration("STATUS", "count") == 0


async def test_backend_timeout_is_counted_failed(sock_path: str, backend: FakeBackend) -> None:
    backend.gate = asyncio.Event()  # never set
    metrics = AgentMetrics()
    async with CniServer(sock_path, backend, backend_timeout=0.2, metrics=metrics) as srv:
        assert (await call(sock_path, frame(cni_env(), config())))[0] == 1
        assert srv.counts == {("ADD", "failed"): 1}
    assert sample(metrics, "nodemesh_agent_cni_request_duration_seconds_bucket",
                  command="ADD", le="0.1") == 0
    assert sample(metrics, "nodemesh_agent_cni_request_duration_seconds_bucket",
                  command="ADD", le="1.0") == 1
