"""Shared pieces of the controller's tests against the fake API server (tests/fakes/kubeapi).

The fake runs on its own loop in a thread (``running_in_thread``), not on the test's loop: the
controller's tests then run on both asyncio and uvloop, whatever loop the fake supports."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from controller.kube.client import KubeClient, load_api_client
from meshapi.backoff import Backoff
from tests.fakes.kubeapi import FakeKubeApi

NODE_SA_USER = "system:serviceaccount:nodemesh-system:nodemesh-node"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"

# the same YAML goes into the local source (a file) and into the fake API server
CLUSTER_YAML = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {nodemesh.io/dataplane-mode: enabled}
---
apiVersion: v1
kind: Namespace
metadata: {name: nodemesh-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  uid: 0b7a7f0e-0000-4000-8000-000000000001
  labels: {app: web}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
status: {podIP: 10.78.1.2, phase: Running}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: shop
  uid: 0b7a7f0e-0000-4000-8000-000000000002
  labels: {app: web}
spec:
  nodeName: node-2
  serviceAccountName: web
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
status: {podIP: 10.78.2.2, phase: Running}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-1
  namespace: shop
  uid: 0b7a7f0e-0000-4000-8000-000000000003
  labels: {app: db, nodemesh.io/dataplane-mode: none}
spec:
  nodeName: node-2
  serviceAccountName: db
  containers: [{name: db}]
status: {podIP: 10.78.2.3}
---
apiVersion: v1
kind: Pod
metadata:
  name: done-1
  namespace: shop
  uid: 0b7a7f0e-0000-4000-8000-000000000004
spec:
  nodeName: node-1
  containers: [{name: job}]
status: {podIP: 10.78.1.9, phase: Succeeded}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports:
  - {name: tcp, port: 5432, targetPort: 5432}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc12
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.78.2.3]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: db-1, namespace: shop, uid: 0b7a7f0e-0000-4000-8000-000000000003}
- addresses: [10.99.0.1]
  conditions: {ready: true}
ports:
- {name: tcp, port: 5432}
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/web]
---
apiVersion: security.nodemesh.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: PERMISSIVE}
"""


@contextlib.asynccontextmanager
async def fake_api(**kwargs: Any) -> AsyncIterator[FakeKubeApi]:
    """The fake on its own loop thread; started and stopped from worker threads, since
    ``running_in_thread`` must not be entered or left on a thread with a running loop."""
    stack = contextlib.ExitStack()
    api = await asyncio.to_thread(stack.enter_context, FakeKubeApi(**kwargs).running_in_thread())
    try:
        yield api
    finally:
        await asyncio.to_thread(stack.close)


def kube_client(api: FakeKubeApi, path: Path, token: str | None = None) -> KubeClient:
    return KubeClient(load_api_client(api.write_kubeconfig(path, token)))


class _Top(random.Random):
    """Jitter that always picks the top of the range: deterministic backoff in tests."""

    def uniform(self, a: float, b: float) -> float:
        return b


def fixed_backoff(delay: float) -> Callable[[], Backoff]:
    return lambda: Backoff(base=delay, cap=delay, rng=_Top())


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


def node_pod(
    name: str, uid: str, node: str, sa: str = "nodemesh-node", ns: str = "nodemesh-system"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": "node"}},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "agent"}]},
        "status": {"podIP": "10.77.0.11", "phase": "Running"},
    }


def add_node_token(
    api: FakeKubeApi,
    token: str,
    pod: str,
    uid: str,
    *,
    username: str = NODE_SA_USER,
    audiences: tuple[str, ...] = ("nodemesh",),
) -> None:
    api.add_token(
        token,
        username=username,
        uid="sa-uid",
        groups=("system:serviceaccounts", "system:authenticated"),
        extra={POD_NAME_EXTRA: [pod], POD_UID_EXTRA: [uid]},
        audiences=audiences,
    )
