"""The CA root in a Kubernetes Secret, and its certificate published in a ConfigMap.

* :class:`SecretCaStore`: the Secret (default ``nodemesh-ca``, keys ``ca.crt``, ``ca.key``, and
  ``ca-chain.crt`` for an operator-supplied intermediate) is loaded if it exists; otherwise the
  leader creates a new self-signed root in it, and a follower waits for it to appear.
* :class:`RootPublisher`: while leader, keeps the ConfigMap (default ``nodemesh-ca-root``, key
  ``root-cert.pem``) equal to the root certificate; the node DaemonSet mounts it.

Invariants: the key travels only inside the Secret's body (never logged, never in an error
message); the Secret is created, never overwritten (``409 AlreadyExists`` → load the winner's);
only the leader writes; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Final

from controller.ca import CertificateAuthority
from controller.errors import CaError, KubeError
from controller.kube.client import CONFIG_MAPS, SECRETS, KubeClient
from controller.kube.lease import LeaderElector

log = logging.getLogger(__name__)

CERT_KEY: Final = "ca.crt"
KEY_KEY: Final = "ca.key"
CHAIN_KEY: Final = "ca-chain.crt"
ROOT_CONFIGMAP_KEY: Final = "root-cert.pem"
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "nodemesh-controller"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret_body(namespace: str, name: str, ca: CertificateAuthority) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "type": "Opaque",
        "data": {CERT_KEY: _b64(ca.signer_cert_pem()), KEY_KEY: _b64(ca.signer_key_pem())},
    }


def ca_from_secret(secret: object, where: str) -> CertificateAuthority:
    """The CA in a Secret as read from the API (``where`` names it in errors)."""
    if not isinstance(secret, Mapping):
        raise CaError(f"{where} is not an object")
    data = secret.get("data")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise CaError(f"{where}: data is not an object")
    decoded: dict[str, bytes] = {}
    for key in (CERT_KEY, KEY_KEY, CHAIN_KEY):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CaError(f"{where}: data[{key}] is not a base64 string")
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise CaError(f"{where}: data[{key}] is not valid base64") from None
    missing = [k for k in (CERT_KEY, KEY_KEY) if k not in decoded]
    if missing:
        raise CaError(
            f"{where} lacks {', '.join(missing)}; it needs {CERT_KEY} and {KEY_KEY} (PEM), and "
            f"{CHAIN_KEY} for an intermediate; fix it or delete it to have a new root created"
        )
    return CertificateAuthority.from_pem(
        decoded[CERT_KEY],
        decoded[KEY_KEY],
        decoded.get(CHAIN_KEY, b""),
        f"{where} data[{CERT_KEY}]",
        f"{where} data[{KEY_KEY}]",
        f"{where} data[{CHAIN_KEY}]",
    )


class SecretCaStore:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        elector: LeaderElector,
        *,
        wait_timeout: float = 120.0,
        poll_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self._elector = elector
        self._wait_timeout = wait_timeout
        self._poll = poll_interval
        self.where = f"Secret {namespace}/{name}"

    async def load(self) -> CertificateAuthority:
        deadline = time.monotonic() + self._wait_timeout
        path = SECRETS.namespaced_path(self._namespace, self._name)
        while True:
            try:
                secret = await asyncio.to_thread(self._client.get, path, f"get {self.where}")
                if secret is not None:
                    ca = ca_from_secret(secret, self.where)
                    log.info("event=ca_loaded secret=%s/%s", self._namespace, self._name)
                    return ca
                if self._elector.is_leader:
                    ca = CertificateAuthority.create_root()
                    if await asyncio.to_thread(self._create, ca):
                        log.info("event=ca_created secret=%s/%s", self._namespace, self._name)
                        return ca
                    continue  # another replica created it first: load theirs
            except KubeError as exc:
                log.warning("event=ca_secret_unavailable secret=%s error=%r", self.where, str(exc))
                last = str(exc)
            else:
                last = "it does not exist yet and this replica is not the leader"
            if time.monotonic() >= deadline:
                raise CaError(
                    f"no CA: {self.where} is not usable after {self._wait_timeout:g}s ({last}); "
                    f"the replica holding Lease {self._elector.namespace}/{self._elector.name} "
                    "creates it: check that one runs and that the controller may get and "
                    "create secrets in its namespace"
                )
            await self._elector.wait_changed(self._poll)

    def _create(self, ca: CertificateAuthority) -> bool:
        try:
            self._client.request(
                "POST",
                SECRETS.namespaced_path(self._namespace),
                f"create {self.where}",
                body=secret_body(self._namespace, self._name, ca),
            )
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True


class RootPublisher:
    """While leader, keeps ConfigMap ``name`` holding the root certificate."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        elector: LeaderElector,
        root_pem: str,
        *,
        resync_seconds: float = 30.0,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self._elector = elector
        self._root_pem = root_pem
        self._resync = resync_seconds
        self.where = f"ConfigMap {namespace}/{name}"
        self.published = False
        self.last_error = ""

    def _body(self, resource_version: str | None) -> dict[str, object]:
        meta: dict[str, object] = {
            "name": self._name,
            "namespace": self._namespace,
            "labels": dict(MANAGED_BY),
        }
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {ROOT_CONFIGMAP_KEY: self._root_pem},
        }

    def ensure(self) -> str:
        """One reconcile (blocking): returns what it did (created, updated, unchanged)."""
        path = CONFIG_MAPS.namespaced_path(self._namespace, self._name)
        current = self._client.get(path, f"get {self.where}")
        if current is None:
            self._client.request(
                "POST",
                CONFIG_MAPS.namespaced_path(self._namespace),
                f"create {self.where}",
                body=self._body(None),
            )
            return "created"
        data = current.get("data") if isinstance(current, Mapping) else None
        if isinstance(data, Mapping) and data.get(ROOT_CONFIGMAP_KEY) == self._root_pem:
            return "unchanged"
        meta = current.get("metadata") if isinstance(current, Mapping) else None
        rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        self._client.request(
            "PUT",
            path,
            f"update {self.where}",
            body=self._body(rv if isinstance(rv, str) else None),
        )
        return "updated"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._elector.is_leader:
                try:
                    what = await asyncio.to_thread(self.ensure)
                    self.published, self.last_error = True, ""
                    if what != "unchanged":
                        log.info("event=ca_root_published configmap=%s action=%s", self.where, what)
                except KubeError as exc:
                    # 409: someone wrote in between; the next round reads again
                    self.last_error = str(exc)
                    log.warning(
                        "event=ca_root_publish_failed configmap=%s error=%r", self.where, str(exc)
                    )
            # after a failure (a 409 included: someone wrote in between) look again soon
            pause = min(self._resync, 2.0) if self.last_error else self._resync
            waiter = asyncio.ensure_future(self._elector.wait_changed(pause))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
