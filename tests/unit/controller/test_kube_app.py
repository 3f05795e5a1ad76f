"""The whole controller in Kubernetes mode against the fake API server: two replicas contending
for the Lease, the CA Secret created once, the root ConfigMap, discovery and CSRs authenticated by
TokenReview, with real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from controller.app import Controller
from controller.config import SOURCE_KUBERNETES, Config, HostPort
from controller.kube.source import WATCHED
from tests.fakes.kubeapi import FakeKubeApi

from .crypto_helpers import make_csr
from .kubehelpers import CLUSTER_YAML, add_node_token, eventually, fake_api, kube_client, node_pod

WATCHED_PLURALS = [r.plural for r in WATCHED]
UID1 = "11111111-1111-4111-8111-111111111111"
TOKEN1 = "node-1-projected-token-abcdefghijklmnop"


GHOST_LEASE = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "nodemesh-controller", "namespace": "nodemesh-system"},
    "spec": {
        "holderIdentity": "ghost",
        "leaseDurationSeconds": 3600,
        "renewTime": "2100-01-01T00:00:00.000000Z",
    },
}


def kube_config(pod_name: str, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "source": SOURCE_KUBERNETES,
        "pod_name": pod_name,
        "listen": HostPort("127.0.0.1", 0),
        "metrics_listen": HostPort("127.0.0.1", 0),
        "api_sans": ("127.0.0.1",),
        "lease_duration_seconds": 3.0,
        "lease_renew_seconds": 0.5,
        "watch_timeout_seconds": 2,
        "drain_timeout_seconds": 2.0,
        "ca_wait_seconds": 20.0,
        "ca_root_resync_seconds": 0.5,
    }
    values.update(overrides)
    return Config(**values)


@dataclass
class Replica:
    controller: Controller
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def api(self) -> str:
        assert self.controller.api_address is not None
        return f"https://127.0.0.1:{self.controller.api_address.port}"

    @property
    def ops(self) -> str:
        assert self.controller.metrics_address is not None
        return f"http://127.0.0.1:{self.controller.metrics_address.port}"

    def leader(self) -> bool:
        assert self.controller.elector is not None
        return self.controller.elector.is_leader

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeApi]:
    async with fake_api(bookmark_interval=0.2) as api:
        api.load_yaml(CLUSTER_YAML)
        api.apply(node_pod("agent-a", UID1, "node-1"))
        add_node_token(api, TOKEN1, "agent-a", UID1)
        yield api


#: what daemonset/10-rbac-controller.yaml grants (verbs per resource; the fake does not model
#: namespaces or resourceNames): the controller must work with no more
CONTROLLER_RBAC = [
    *((verb, plural) for verb in ("get", "list", "watch") for plural in WATCHED_PLURALS),
    ("create", "tokenreviews"),
    *((verb, "leases") for verb in ("create", "get", "update")),
    *((verb, "secrets") for verb in ("create", "get")),
    *((verb, "configmaps") for verb in ("create", "get", "update")),
]


def replica_token(name: str) -> str:
    return f"token-of-{name}-0123456789"


async def start(fake: FakeKubeApi, tmp_path: Path, name: str, **overrides: Any) -> Replica:
    token = replica_token(name)
    fake.add_token(
        token, username=f"system:serviceaccount:nodemesh-system:{name}", allow=CONTROLLER_RBAC
    )
    client = kube_client(fake, tmp_path / f"kubeconfig-{name}", token=token)
    controller = Controller(kube_config(name, **overrides), kube_client=client)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.serve(stop), name=f"controller-{name}")
    return Replica(controller, stop, task)


@pytest.fixture
async def replicas(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Replica, Replica]]:
    caplog.set_level(logging.INFO)
    async with AsyncExitStack() as stack:
        a = await start(fake, tmp_path, "ctrl-a")
        stack.push_async_callback(a.halt)
        b = await start(fake, tmp_path, "ctrl-b")
        stack.push_async_callback(b.halt)
        for r in (a, b):
            await eventually(lambda r=r: r.controller.ready() or r.task.done(), 20)  # type: ignore[misc]
            if r.task.done():
                r.task.result()
        yield a, b


def secret_root(fake: FakeKubeApi) -> bytes:
    secret = fake.get_object("Secret", "nodemesh-system", "nodemesh-ca")
    assert secret is not None
    return base64.b64decode(secret["data"]["ca.crt"])


async def test_two_replicas_one_leader_one_secret_same_ca(
    fake: FakeKubeApi, replicas: tuple[Replica, Replica], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    await eventually(lambda: a.leader() != b.leader())
    leader, follower = (a, b) if a.leader() else (b, a)
    assert leader.controller.ca is not None and follower.controller.ca is not None
    root_pem = leader.controller.ca.root_pem()
    assert follower.controller.ca.root_pem() == root_pem
    assert secret_root(fake).decode() == root_pem
    logged = "\n".join(r.getMessage() for r in [*caplog.get_records("setup"), *caplog.records])
    assert logged.count("event=ca_created") == 1 and "event=ca_loaded" in logged
    key_b64 = fake.get_object("Secret", "nodemesh-system", "nodemesh-ca")["data"]["ca.key"]  # type: ignore[index]
    key_pem = base64.b64decode(key_b64).decode()
    body = key_pem.split("-----")[2].strip().splitlines()[0]
    assert body not in logged  # the key is never logged
    lease = fake.get_object("Lease", "nodemesh-system", "nodemesh-controller")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == leader.controller.config.pod_name
    assert lease["spec"]["leaseDurationSeconds"] == 3
    await eventually(lambda: fake.get_object("ConfigMap", "nodemesh-system", "nodemesh-ca-root"))
    cm = fake.get_object("ConfigMap", "nodemesh-system", "nodemesh-ca-root")
    assert cm is not None and cm["data"]["root-cert.pem"] == root_pem
    # only the leader writes the ConfigMap; a changed one is put back
    cm["data"]["root-cert.pem"] = "tampered"
    fake.apply(cm)
    await eventually(
        lambda: (
            fake.get_object("ConfigMap", "nodemesh-system", "nodemesh-ca-root")["data"][  # type: ignore[index]
                "root-cert.pem"
            ]
            == root_pem
        ),
        within=40,
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{follower.ops}/debug/status") as resp:
            status = await resp.json()
        async with session.get(f"{leader.ops}/metrics") as resp:
            metrics = await resp.text()
    assert status["leader"]["leader"] is False
    assert status["leader"]["holder"] == leader.controller.config.pod_name
    assert status["source"]["source"] == "kubernetes"
    assert status["source"]["resources"]["pods"]["synced"] is True
    assert "nodemesh_controller_leader 1.0" in metrics
    assert 'nodemesh_controller_watch_relists_total{resource="pods"} 1.0' in metrics

    # single-writer work: the follower never wrote the Secret or the ConfigMap
    follower_token = replica_token(follower.controller.config.pod_name)
    follower_writes = [
        r.path
        for r in fake.requests
        if r.token == follower_token and r.method in ("POST", "PUT", "PATCH", "DELETE")
    ]
    assert all("/leases" in path for path in follower_writes), follower_writes
    leader_token = replica_token(leader.controller.config.pod_name)
    assert any(
        r.token == leader_token and r.method == "POST" and r.path.endswith("/secrets")
        for r in fake.requests
    )

    # the leader goes away: it releases the Lease and the other takes over at once
    await leader.halt()
    await eventually(follower.leader, within=5)
    lease = fake.get_object("Lease", "nodemesh-system", "nodemesh-controller")
    assert (
        lease is not None and lease["spec"]["holderIdentity"] == follower.controller.config.pod_name
    )


async def test_nodes_authenticate_by_token_review(
    fake: FakeKubeApi, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    assert a.controller.ca is not None
    ctx = ssl.create_default_context(cadata=a.controller.ca.root_pem())
    headers = {"Authorization": f"Bearer {TOKEN1}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for replica in (a, b):  # active-active: both serve nodes
            async with session.get(f"{replica.api}/v1/discovery", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                line = await asyncio.wait_for(resp.content.readline(), 10)
            assert b'"snapshot"' in line and b"web-1" in line
        url = f"{a.api}/v1/csr"
        # web-1 (sa web) runs on node-1: signed
        body = {"csr": make_csr(["spiffe://cluster.local/ns/shop/sa/web"]).decode()}
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            chain = (await resp.json())["certChain"]
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        assert leaf.issuer == a.controller.ca.root.subject
        # db-1 (sa db) runs on node-2 only: node-1 may not have it
        body = {"csr": make_csr(["spiffe://cluster.local/ns/shop/sa/db"]).decode()}
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 403
            assert "node-1" in (await resp.json())["error"]
        async with session.post(
            url, json=body, headers={"Authorization": "Bearer nope-nope-nope-nope"}
        ) as resp:
            assert resp.status == 401
        fake.fail_next("POST", "/apis/authentication.k8s.io/v1/tokenreviews", 500)
        other = {"Authorization": "Bearer another-token-not-yet-cached-123"}
        add_node_token(fake, "another-token-not-yet-cached-123", "agent-a", UID1)
        async with session.post(url, json=body, headers=other) as resp:
            assert resp.status == 503
            assert "retry later" in (await resp.json())["error"]


async def test_follower_waits_for_the_secret_and_fails_clearly_without_a_leader(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # someone else holds the lease and never writes the Secret
    fake.apply(GHOST_LEASE)
    caplog.set_level(logging.INFO)
    replica = await start(fake, tmp_path, "ctrl-a", ca_wait_seconds=1.0)
    with pytest.raises(Exception, match="no CA: Secret nodemesh-system/nodemesh-ca"):
        await asyncio.wait_for(replica.task, 15)


async def test_a_waiting_follower_is_alive_not_ready_and_stops_promptly(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.apply(GHOST_LEASE)
    replica = await start(fake, tmp_path, "ctrl-a", ca_wait_seconds=60.0)
    await eventually(lambda: replica.controller.metrics_address is not None)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{replica.ops}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{replica.ops}/readyz") as resp:
            assert resp.status == 503
        async with session.get(f"{replica.ops}/debug/status") as resp:
            status = await resp.json()
    assert status["ready"] is False and status["leader"]["holder"] == "ghost"
    assert replica.controller.api_address is None  # no API without a CA
    started = asyncio.get_running_loop().time()
    await replica.halt()
    assert asyncio.get_running_loop().time() - started < 3


async def test_operator_supplied_secret_is_loaded(fake: FakeKubeApi, tmp_path: Path) -> None:
    from controller.ca import CertificateAuthority

    ca = CertificateAuthority.create_root("operator root")
    fake.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "my-ca", "namespace": "nodemesh-system"},
            "data": {
                "ca.crt": base64.b64encode(ca.signer_cert_pem()).decode(),
                "ca.key": base64.b64encode(ca.signer_key_pem()).decode(),
            },
        }
    )
    replica = await start(fake, tmp_path, "ctrl-a", ca_secret="my-ca")
    try:
        await eventually(lambda: replica.controller.ready() or replica.task.done(), 20)
        assert replica.controller.ca is not None
        assert replica.controller.ca.root_pem() == ca.root_pem()
    finally:
        await replica.halt()


async def test_process_in_kubernetes_mode_serves_and_drains(tmp_path: Path) -> None:
    """``python -m controller --source kubernetes`` end to end: env and flags, readiness, the
    root ConfigMap, SIGTERM → drain → exit 0 with the Lease released."""
    import os
    import signal
    import sys

    async with fake_api(bookmark_interval=0.2) as api:
        api.load_yaml(CLUSTER_YAML)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        env = {
            **os.environ,
            "NODEMESH_CONTROLLER_SOURCE": "kubernetes",
            "POD_NAME": "ctrl-proc",
            "POD_NAMESPACE": "nodemesh-system",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        seen = b""
        try:
            while b"event=kube_config_loaded" not in seen:
                line = await asyncio.wait_for(proc.stderr.readline(), 20)
                assert line, seen
                seen += line
            assert b"event=ca_created" in seen and b"source=kubernetes" in seen
            await eventually(
                lambda: api.get_object("ConfigMap", "nodemesh-system", "nodemesh-ca-root")
            )
            proc.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(proc.stderr.read(), 20)
            assert await asyncio.wait_for(proc.wait(), 20) == 0, rest
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert b"event=controller_stopped" in rest and b"event=leader_released" in rest
        lease = api.get_object("Lease", "nodemesh-system", "nodemesh-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == ""
