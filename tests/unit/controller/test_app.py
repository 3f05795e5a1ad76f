"""End to end on 127.0.0.1 with real TLS: the whole controller in-process on ephemeral ports."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509

from controller.app import Controller
from controller.config import Config, HostPort
from meshapi.csr import CsrResponse

from .crypto_helpers import make_csr
from .helpers import pod, service

TOKEN1 = "node-1-token-0123456789abcdef"
TOKEN2 = "node-2-token-0123456789abcdef"


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


@dataclass
class Running:
    controller: Controller
    session: aiohttp.ClientSession
    config_dir: Path
    state_dir: Path

    @property
    def api(self) -> str:
        assert self.controller.api_address is not None
        return f"https://127.0.0.1:{self.controller.api_address.port}"

    @property
    def ops(self) -> str:
        assert self.controller.metrics_address is not None
        return f"http://127.0.0.1:{self.controller.metrics_address.port}"


def write(path: Path, *docs: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.rename(path)  # atomic, as an editor or meshctl would


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config_dir, tokens, state = tmp_path / "config", tmp_path / "tokens", tmp_path / "state"
    config_dir.mkdir()
    tokens.mkdir()
    (tokens / "node-1").write_text(TOKEN1)
    (tokens / "node-2").write_text(TOKEN2)
    write(config_dir / "web.yaml", pod(uid="u1"), service())
    write(
        config_dir / "db.yaml",
        pod("db-1", uid="u2", ip="10.78.2.2", node="node-2", sa="db", labels={"app": "db"}),
    )
    config = Config(
        config_dir=config_dir,
        state_dir=state,
        node_tokens_dir=tokens,
        listen=HostPort("127.0.0.1", 0),
        metrics_listen=HostPort("127.0.0.1", 0),
        api_sans=("127.0.0.1",),
        drain_timeout_seconds=2.0,
    )
    controller = Controller(config)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.serve(stop), name="controller-under-test")
    await eventually(lambda: controller.listening.is_set() or task.done())
    if task.done():
        task.result()  # raises what made the controller fail to start
    ctx = ssl.create_default_context(cafile=str(state / "ca" / "root-cert.pem"))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    try:
        yield Running(controller, session, config_dir, state)
    finally:
        await session.close()
        stop.set()
        await asyncio.wait_for(task, 10)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def read_msg(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    line = await asyncio.wait_for(resp.content.readline(), 10)
    assert line, "stream ended"
    msg: dict[str, Any] = json.loads(line)
    return msg


async def test_discovery_snapshot_delta_resume(running: Running) -> None:
    await eventually(lambda: running.controller.ready())
    url = f"{running.api}/v1/discovery"
    async with running.session.get(url, headers=auth(TOKEN1)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        snap = await read_msg(resp)
        assert snap["type"] == "snapshot"
        assert {w["uid"] for w in snap["workloads"]} == {"u1", "u2"}
        assert [s["name"] for s in snap["services"]] == ["web"]
        epoch, version = snap["epoch"], snap["version"]
        # change a file: a delta follows
        write(
            running.config_dir / "web.yaml",
            pod(uid="u1"),
            pod("web-2", uid="u3", ip="10.78.1.3"),
            service(),
        )
        delta = await read_msg(resp)
        assert delta["type"] == "delta" and delta["version"] == version + 1
        assert {w["uid"] for w in delta["upsert"]["workloads"]} == {"u3"}
        assert [len(s["endpoints"]) for s in delta["upsert"]["services"]] == [2]
        assert running.controller.hub.subscriptions
        status = await running.session.get(f"{running.ops}/debug/status")
        body = await status.json()
        assert [n["node"] for n in body["connectedNodes"]] == ["node-1"]
        status.release()
    # resume: only the deltas after the version we had
    params = {"epoch": epoch, "version": str(version)}
    async with running.session.get(url, headers=auth(TOKEN1), params=params) as resp:
        msg = await read_msg(resp)
        assert msg["type"] == "delta" and msg["version"] == version + 1
    # another epoch: a snapshot
    params = {"epoch": "not-ours", "version": str(version)}
    async with running.session.get(url, headers=auth(TOKEN1), params=params) as resp:
        msg = await read_msg(resp)
        assert msg["type"] == "snapshot" and msg["version"] == version + 1


async def test_bad_token_is_401(running: Running) -> None:
    for path, method in [("/v1/discovery", "GET"), ("/v1/csr", "POST")]:
        for headers in [{}, auth("wrong-token-0123456789abcdef")]:
            async with running.session.request(method, running.api + path, headers=headers) as resp:
                assert resp.status == 401
                assert "error" in await resp.json()


async def test_csr_signed_refused_and_forbidden(running: Running) -> None:
    await eventually(lambda: running.controller.ready())
    url = f"{running.api}/v1/csr"
    body = {"csr": make_csr().decode()}
    async with running.session.post(url, json=body, headers=auth(TOKEN1)) as resp:
        assert resp.status == 200, await resp.text()
        answer = CsrResponse.from_wire(await resp.json())
    leaf = x509.load_pem_x509_certificate(answer.cert_chain[0].encode())
    root = x509.load_pem_x509_certificate(answer.root.encode())
    leaf.verify_directly_issued_by(root)
    assert answer.not_after.endswith("Z")
    # node-1 runs no pod with sa "db" (db-1 is on node-2): 403
    db = {"csr": make_csr(["spiffe://cluster.local/ns/default/sa/db"]).decode()}
    async with running.session.post(url, json=db, headers=auth(TOKEN1)) as resp:
        assert resp.status == 403
        message = (await resp.json())["error"]
        assert "node-1" in message and "spiffe://cluster.local/ns/default/sa/db" in message
    async with running.session.post(url, json=db, headers=auth(TOKEN2)) as resp:
        assert resp.status == 200
    async with running.session.post(url, data=b"garbage", headers=auth(TOKEN1)) as resp:
        assert resp.status == 400
    async with running.session.post(url, data=b"x" * 20000, headers=auth(TOKEN1)) as resp:
        assert resp.status == 413
    async with running.session.get(f"{running.ops}/metrics") as resp:
        text = await resp.text()
    assert "nodemesh_controller_csr_signed_total 2.0" in text
    assert 'nodemesh_controller_csr_refused_total{reason="forbidden"} 1.0' in text
    assert "nodemesh_controller_config_version 1.0" in text


async def test_ops_endpoints_and_config_errors(running: Running) -> None:
    async with running.session.get(f"{running.ops}/healthz") as resp:
        assert resp.status == 200
    await eventually(lambda: running.controller.ready())
    async with running.session.get(f"{running.ops}/readyz") as resp:
        assert resp.status == 200
    (running.config_dir / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {nodeName: 5}\n"
    )
    await eventually(lambda: running.controller.config_errors())
    async with running.session.get(f"{running.ops}/debug/status") as resp:
        status = await resp.json()
    (err,) = status["configErrors"]
    assert err["file"].endswith("bad.yaml") and err["object"] == "Pod default/x"
    assert err["field"] == "spec.nodeName"
    async with running.session.get(f"{running.ops}/metrics") as resp:
        text = await resp.text()
    assert "nodemesh_controller_config_errors 1.0" in text
    assert "nodemesh_controller_config_rejections_total 1.0" in text


async def test_shutdown_ends_open_streams(tmp_path: Path) -> None:
    config_dir, tokens, state = tmp_path / "config", tmp_path / "tokens", tmp_path / "state"
    config_dir.mkdir()
    tokens.mkdir()
    (tokens / "node-1").write_text(TOKEN1)
    config = Config(
        config_dir=config_dir,
        state_dir=state,
        node_tokens_dir=tokens,
        listen=HostPort("127.0.0.1", 0),
        metrics_listen=HostPort("127.0.0.1", 0),
    )
    controller = Controller(config)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.serve(stop))
    await eventually(lambda: controller.ready() or task.done())
    assert controller.api_address is not None
    ctx = ssl.create_default_context(cafile=str(state / "ca" / "root-cert.pem"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        url = f"https://localhost:{controller.api_address.port}/v1/discovery"
        async with session.get(url, headers=auth(TOKEN1)) as resp:
            assert (await read_msg(resp))["type"] == "snapshot"
            started = time.monotonic()
            stop.set()
            assert await asyncio.wait_for(resp.content.read(), 5) == b""  # clean end of stream
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 3
