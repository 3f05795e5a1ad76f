"""Shared builders for the CNI tests: requests as the plugin frames them, configs as runtimes
write them, and a fake backend whose calls the test can order with events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from node_agent.cni.protocol import AddRequest, CheckRequest, DelRequest

ARGS = (
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=1c7e-4f;"
    "K8S_POD_INFRA_CONTAINER_ID=abc123"
)

PREV_RESULT: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/cni-1"},
    ],
    "ips": [
        {"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2},
        {"address": "fd00::7/64", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def config(version: str = "1.0.0", prev: Any = PREV_RESULT, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "cbr0", "type": "nodemesh-cni"}
    conf["socket"] = "/var/run/nodemesh/cni.sock"
    if prev is not None:
        conf["prevResult"] = prev
    conf.update(extra)
    return conf


def cni_env(command: str = "ADD", **override: str | None) -> dict[str, str]:
    env: dict[str, str | None] = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "3f6940ab5ab4",
        "CNI_NETNS": "/var/run/netns/cni-1",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": ARGS,
        "CNI_PATH": "/opt/cni/bin",
    }
    env.update(override)
    return {k: v for k, v in env.items() if v is not None}


def frame(env: Mapping[str, str], body: bytes | dict[str, Any]) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = b"".join(f"{k}={v}\n".encode() for k, v in env.items())
    return b"NODEMESH-CNI 1\n" + lines + b"\n" + raw


class FakeBackend:
    """Records calls. ``fail`` is raised from every call; ``gate`` (if set) is awaited inside
    each call after ``entered`` is set, so a test can hold a request in the backend."""

    def __init__(self) -> None:
        self.calls: list[AddRequest | DelRequest | CheckRequest] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.finished = asyncio.Event()

    async def _call(self, req: AddRequest | DelRequest | CheckRequest) -> None:
        self.calls.append(req)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
        finally:
            self.finished.set()

    async def add(self, req: AddRequest) -> None:
        await self._call(req)

    async def delete(self, req: DelRequest) -> None:
        await self._call(req)

    async def check(self, req: CheckRequest) -> None:
        await self._call(req)
