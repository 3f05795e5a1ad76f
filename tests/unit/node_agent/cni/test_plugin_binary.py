"""The static C plugin, run exactly as a container runtime runs a chained plugin: CNI_* in the
environment, the plugin's config (with ``prevResult``) on stdin, the result on stdout, and the
agent's server (fake backend) at the end of ``NODEMESH_CNI_SOCKET``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from node_agent.cni import protocol
from node_agent.cni.errors import CniCode, CniFailure
from node_agent.cni.protocol import AddRequest, DelRequest
from node_agent.cni.server import CniServer

from .helpers import PREV_RESULT, FakeBackend, cni_env, config

Plugin = Callable[..., Awaitable[tuple[int, bytes, bytes]]]


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "cni.sock")


@pytest.fixture
def fallback_path(tmp_path: Path) -> Path:
    return tmp_path / "cni-fallback"


@pytest.fixture
def plugin(plugin_binary: str, sock_path: str, fallback_path: Path) -> Plugin:
    async def run(
        command: str,
        stdin: bytes | dict[str, Any],
        *,
        socket_path: str | None = None,
        **env_override: str | None,
    ) -> tuple[int, bytes, bytes]:
        env = cni_env(command, **env_override)
        env["NODEMESH_CNI_SOCKET"] = socket_path or sock_path
        env.setdefault("NODEMESH_CNI_FALLBACK_FILE", str(fallback_path))
        data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        proc = await asyncio.create_subprocess_exec(
            plugin_binary,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate(data)
        assert proc.returncode is not None
        return proc.returncode, out, err

    return run


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def agent(sock_path: str, backend: FakeBackend) -> AsyncIterator[CniServer]:
    async with CniServer(sock_path, backend) as srv:
        yield srv


def cni_error(out: bytes) -> dict[str, Any]:
    err: dict[str, Any] = json.loads(out)
    assert set(err) == {"cniVersion", "code", "msg", "details"}, err
    return err


@pytest.mark.parametrize("version", protocol.SUPPORTED_VERSIONS)
async def test_add_outputs_prev_result(
    agent: CniServer, backend: FakeBackend, plugin: Plugin, version: str
) -> None:
    code, out, _ = await plugin("ADD", config(version))
    assert code == 0
    assert json.loads(out) == {**PREV_RESULT, "cniVersion": version}
    [req] = backend.calls
    assert isinstance(req, AddRequest)
    assert (req.pod_namespace, req.pod_name, req.pod_uid) == ("shop", "web-0", "1c7e-4f")
    assert (req.container_id, req.netns, req.ifname) == (
        "3f6940ab5ab4",
        "/var/run/netns/cni-1",
        "eth0",
    )
    assert [str(ip) for ip in req.pod_ips] == ["10.244.1.7", "fd00::7"]


async def test_del_and_check_output_nothing(
    agent: CniServer, backend: FakeBackend, plugin: Plugin
) -> None:
    assert await plugin("CHECK", config()) == (0, b"", b"")
    assert await plugin("DEL", config(prev=None), CNI_NETNS=None) == (0, b"", b"")
    assert isinstance(backend.calls[1], DelRequest) and backend.calls[1].netns == ""


async def test_status_with_agent(agent: CniServer, plugin: Plugin) -> None:
    assert (await plugin("STATUS", config("1.1.0", prev=None)))[:2] == (0, b"")


async def test_backend_failure_fails_the_sandbox(
    agent: CniServer, backend: FakeBackend, plugin: Plugin
) -> None:
    backend.fail = CniFailure(
        "cannot redirect shop/web-0: ztunnel not connected", "check the ztunnel container", 100
    )
    code, out, _ = await plugin("ADD", config("0.4.0"))
    assert code == 1
    assert cni_error(out) == {
        "cniVersion": "0.4.0",
        "code": 100,
        "msg": "cannot redirect shop/web-0: ztunnel not connected",
        "details": "check the ztunnel container",
    }


async def test_garbage_config(agent: CniServer, backend: FakeBackend, plugin: Plugin) -> None:
    code, out, _ = await plugin("ADD", b"{this is not json")
    err = json.loads(out)
    assert code == 1 and err["code"] == CniCode.DECODING_FAILURE
    assert err["msg"].startswith("network configuration on stdin is not JSON")
    assert await plugin("DEL", b"{this is not json") == (0, b"", b"")
    assert backend.calls == []


async def test_plugin_returns_only_after_backend(
    agent: CniServer, backend: FakeBackend, plugin: Plugin
) -> None:
    backend.gate = asyncio.Event()
    order: list[str] = []

    async def run_plugin() -> tuple[int, bytes, bytes]:
        result = await plugin("ADD", config())
        order.append("plugin exited")
        return result

    task = asyncio.create_task(run_plugin())
    await backend.entered.wait()
    # the backend holds the request: the plugin cannot have answered the runtime yet
    assert not task.done() and order == []
    order.append("backend returns")
    backend.gate.set()
    code, out, _ = await task
    assert order == ["backend returns", "plugin exited"]
    assert code == 0 and json.loads(out)["ips"] == PREV_RESULT["ips"]


async def test_agent_down(plugin: Plugin, sock_path: str, fallback_path: Path) -> None:
    code, out, err = await plugin("ADD", config("1.0.0"))
    msg = f"nodemesh node agent not reachable at {sock_path}: No such file or directory"
    assert code == 1
    e = cni_error(out)
    assert (e["cniVersion"], e["code"]) == ("1.0.0", CniCode.TRY_AGAIN_LATER)
    assert e["msg"] == (
        f"{msg}; no fallback list at {fallback_path} (No such file or directory); "
        "the kubelet will retry"
    )
    assert "nodemesh DaemonSet pod" in e["details"]
    assert msg.encode() in err
    # a pod must always be deletable; CHECK does not report a transient outage as permanent
    assert (await plugin("DEL", config()))[:2] == (0, b"")
    assert (await plugin("CHECK", config()))[:2] == (0, b"")
    code, out, _ = await plugin("STATUS", config("1.1.0", prev=None))
    assert code == 1 and cni_error(out)["code"] == CniCode.NOT_AVAILABLE


async def test_agent_down_stale_socket(
    plugin: Plugin, sock_path: str, fallback_path: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()
    code, out, _ = await plugin("ADD", config())
    assert code == 1
    assert cni_error(out)["msg"] == (
        f"nodemesh node agent not reachable at {sock_path}: Connection refused; "
        f"no fallback list at {fallback_path} (No such file or directory); "
        "the kubelet will retry"
    )


async def test_agent_too_slow(sock_path: str, backend: FakeBackend, plugin: Plugin) -> None:
    backend.gate = asyncio.Event()
    async with CniServer(sock_path, backend, drain_timeout=0.1):
        code, out, _ = await plugin("ADD", config(), NODEMESH_CNI_TIMEOUT_SECONDS="1")
        assert code == 1
        e = cni_error(out)
        assert e["code"] == CniCode.TRY_AGAIN_LATER
        assert e["msg"] == (
            f"nodemesh node agent at {sock_path} did not answer within 1 s "
            "(waiting for the answer); the kubelet will retry"
        )
        assert await plugin("DEL", config(), NODEMESH_CNI_TIMEOUT_SECONDS="1") == (
            0,
            b"",
            f"nodemesh-cni: nodemesh node agent at {sock_path} did not answer within 1 s "
            "(waiting for the answer): DEL succeeds without the agent\n".encode(),
        )


async def raw_agent(path: str, answer: bytes) -> asyncio.AbstractServer:
    """Something else at the socket: reads the request, answers ``answer``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.write(answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_unix_server(handle, path)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"NODEMESH-CNI 1 0\n", (0, b"")),
        (b"NODEMESH-CNI 1 3\nexact \x00 bytes", (3, b"exact \x00 bytes")),
        (b"NODEMESH-CNI 1 255\n{}", (255, b"{}")),
    ],
)
async def test_answer_relayed_exactly(
    plugin: Plugin, sock_path: str, answer: bytes, expected: tuple[int, bytes]
) -> None:
    server = await raw_agent(sock_path, answer)
    async with server:
        assert (await plugin("ADD", config()))[:2] == expected


@pytest.mark.parametrize(
    "answer", [b"HTTP/1.1 200 OK\r\n\r\n", b"NODEMESH-CNI 1 256\n", b"NODEMESH-CNI 1 x\n", b""]
)
async def test_malformed_answer(plugin: Plugin, sock_path: str, answer: bytes) -> None:
    server = await raw_agent(sock_path, answer)
    async with server:
        code, out, _ = await plugin("ADD", config())
        assert code == 1
        e = cni_error(out)
        assert e["code"] == CniCode.AGENT_PROTOCOL
        assert "malformed answer" in e["msg"]
        assert (await plugin("DEL", config()))[:2] == (0, b"")


async def test_request_is_the_documented_frame(plugin: Plugin, sock_path: str) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())  # returns at the plugin's shutdown(SHUT_WR)
        writer.write(b"NODEMESH-CNI 1 0\n")
        writer.close()
        await writer.wait_closed()

    body = json.dumps(config()).encode()
    async with await asyncio.start_unix_server(handle, sock_path):
        await plugin("ADD", body)
    env = cni_env("ADD")
    assert seen == [
        b"NODEMESH-CNI 1\n"
        + b"".join(f"{k}={env[k]}\n".encode() for k in protocol.ENV_KEYS)
        + b"\n"
        + body
    ]


async def test_version(plugin: Plugin) -> None:
    code, out, _ = await plugin("VERSION", b"")
    assert code == 0
    assert json.loads(out) == {
        "cniVersion": "1.1.0",
        "supportedVersions": list(protocol.SUPPORTED_VERSIONS),
    }


async def test_gc_succeeds_without_agent(plugin: Plugin) -> None:
    gc = config("1.1.0", prev=None, **{"cni.dev/valid-attachments": []})
    assert await plugin("GC", gc) == (0, b"", b"")


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("ADD", {"CNI_COMMAND": None}, "CNI_COMMAND is not set"),
        ("FROB", {}, "unknown CNI_COMMAND FROB"),
        ("ADD", {"CNI_ARGS": "K8S_POD_NAME=a\nb"}, "CNI_ARGS contains a newline"),
        ("ADD", {"NODEMESH_CNI_TIMEOUT_SECONDS": "0"}, "NODEMESH_CNI_TIMEOUT_SECONDS is not a"),
    ],
)
async def test_bad_environment(
    plugin: Plugin, command: str, override: dict[str, str | None], message: str
) -> None:
    code, out, _ = await plugin(command, config(), **override)
    assert code == 1
    e = cni_error(out)
    assert e["code"] == CniCode.INVALID_ENV and e["msg"].startswith(message)


async def test_config_too_large(agent: CniServer, backend: FakeBackend, plugin: Plugin) -> None:
    code, out, _ = await plugin("ADD", config(pad="x" * (protocol.MAX_CONFIG_BYTES + 1)))
    e = cni_error(out)
    assert code == 1 and e["code"] == CniCode.INVALID_CONFIG
    assert e["msg"] == "network configuration on stdin is larger than 1048576 bytes"
    assert backend.calls == []


async def test_own_errors_are_valid_json(plugin: Plugin, tmp_path: Path) -> None:
    weird = str(tmp_path / 'a"b\\c\tdé.sock')
    # the top-level cniVersion labels the error, not the prevResult's, whatever the key order
    conf = b'{"prevResult": {"cniVersion": "9.9.9", "ips": []}, "name": "n", "cniVersion": "0.4.0"}'
    code, out, _ = await plugin("ADD", conf, socket_path=weird)
    e = cni_error(out)
    assert code == 1 and e["cniVersion"] == "0.4.0"
    assert e["msg"].startswith(
        "nodemesh node agent not reachable at " + weird.replace("é", "\ufffd\ufffd")
    )
    # no usable cniVersion: the newest one we speak
    code, out, _ = await plugin("ADD", b'{"cniVersion": "1.\\u0030.0"}', socket_path=weird)
    assert cni_error(out)["cniVersion"] == "1.1.0"


def test_binary_is_static(plugin_binary: str) -> None:
    with open(plugin_binary, "rb") as f:
        elf = f.read()
    assert elf[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in elf  # no program interpreter: nothing to load at runtime
    assert os.access(plugin_binary, os.X_OK)
