"""The pods this ztunnel serves: per pod a netns fd, a workload certificate and three listeners.

Adding a pod (from the ZDS server):

1. acquire the workload certificate for the pod's identity (``CertificateStore.acquire``);
2. in a worker thread inside the pod's netns, bind 15001, 15006 and 15008 (all or none);
3. serve them on the loop: outbound capture, plaintext refusal, HBONE (TLS with the identity's
   ``server_context``).

The add is complete (and the agent acked) only once the listeners are bound and serving.
Re-adding a served pod builds the new one first, then tears the old one down.
Each pod gets its own proxy context (``context``: its HBONE pool and its connection tracker)
before its listeners serve, so a tunnel is always opened from the pod's own netns and IP and
never shared with another pod.
Deleting a pod closes its listeners, its HBONE server, its connections and tasks, its HBONE
pool, its netns fd, and releases its certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshapi.constants import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_CAPTURE_PORT
from meshapi.model import Workload
from ztunnel.errors import CertError, NetnsError, PodError
from ztunnel.metrics import Metrics
from ztunnel.netns import NetnsExecutor, listening_sockets
from ztunnel.runtime import PodContext, PodRuntime
from ztunnel.seams import CertSource, HboneListener

log = logging.getLogger("ztunnel.pods")

POD_PORTS = (OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT)
CERT_TIMEOUT_SECONDS = 10.0


class PodHandlers:
    """What the pod manager asks the proxy logic for, for each pod (wired by ``app.py``)."""

    def __init__(
        self,
        outbound: Callable[[PodRuntime], asyncio.Protocol],
        plaintext: Callable[[PodRuntime], asyncio.Protocol],
        hbone_server: Callable[[PodRuntime, ssl.SSLContext], HboneListener],
    ) -> None:
        self.outbound = outbound
        self.plaintext = plaintext
        self.hbone_server = hbone_server


@dataclass(eq=False)
class ServedPod:
    runtime: PodRuntime
    servers: list[asyncio.Server]
    hbone: HboneListener
    netns_ino: int
    redirection: str = "iptables"

    @property
    def workload(self) -> Workload:
        return self.runtime.workload


class PodManager:
    def __init__(
        self,
        *,
        executor: NetnsExecutor,
        certs: CertSource,
        handlers: PodHandlers,
        metrics: Metrics,
        context: Callable[[Workload], PodContext],
        ports: tuple[int, int, int] = POD_PORTS,
    ) -> None:
        self._executor = executor
        self._certs = certs
        self._handlers = handlers
        self._context = context
        self._metrics = metrics
        self._ports = ports
        self._pods: dict[str, ServedPod] = {}
        self._lock = asyncio.Lock()

    def served(self) -> list[str]:
        return sorted(self._pods)

    def pods(self) -> list[ServedPod]:
        return [self._pods[uid] for uid in sorted(self._pods)]

    def get(self, uid: str) -> ServedPod | None:
        return self._pods.get(uid)

    async def add(
        self, workload: Workload, netns_fd: int, redirection: str = "iptables"
    ) -> None:
        """Serve ``workload``; takes ownership of ``netns_fd`` (closed on failure or delete).
        ``redirection`` is the agent's mode for the pod, shown by the admin endpoint."""
        async with self._lock:
            try:
                pod = await self._start(workload, netns_fd)
            except BaseException:
                os.close(netns_fd)
                raise
            pod.redirection = redirection
            old = self._pods.get(str(workload.uid))
            self._pods[str(workload.uid)] = pod
            self._metrics.pods_served.set(len(self._pods))
            if old is not None:
                await self._stop(old, "replaced")
        log.info("serving pod %s/%s (%s, %s)", workload.namespace, workload.name, workload.uid,
                 workload.ip)

    def keep(self, uid: str) -> None:
        if uid not in self._pods:
            raise PodError(f"pod {uid} is not served by this ztunnel; send add, not keep")

    async def delete(self, uid: str) -> bool:
        async with self._lock:
            pod = self._pods.pop(uid, None)
            self._metrics.pods_served.set(len(self._pods))
            if pod is None:
                return False
            await self._stop(pod, "deleted")
        log.info("stopped serving pod %s", uid)
        return True

    async def retain_only(self, uids: Iterable[str]) -> list[str]:
        """Drop every served pod not in ``uids`` (ZDS snapshot_complete); returns the dropped."""
        wanted = set(uids)
        dropped = [uid for uid in self.served() if uid not in wanted]
        for uid in dropped:
            await self.delete(uid)
        return dropped

    async def close(self) -> None:
        for uid in self.served():
            await self.delete(uid)

    async def _start(self, workload: Workload, netns_fd: int) -> ServedPod:
        identity = workload.identity
        try:
            async with asyncio.timeout(CERT_TIMEOUT_SECONDS):
                cert = await self._certs.acquire(identity)
        except (CertError, TimeoutError) as exc:
            raise PodError(
                f"no certificate for {identity} (pod {workload.namespace}/{workload.name}): "
                f"{exc or 'timed out'} — is the controller reachable and the node allowed "
                "to request this identity?"
            ) from exc
        try:
            return await self._listen(workload, netns_fd, cert.server_context)
        except BaseException:
            self._certs.release(identity)
            raise

    async def _listen(
        self, workload: Workload, netns_fd: int, context: ssl.SSLContext
    ) -> ServedPod:
        try:
            ino = os.fstat(netns_fd).st_ino
            socks = await self._executor.run(netns_fd, lambda: listening_sockets(self._ports))
        except (OSError, NetnsError) as exc:
            raise PodError(
                f"cannot open listeners for pod {workload.namespace}/{workload.name} "
                f"in its netns: {exc}"
            ) from exc
        ctx = self._context(workload)
        runtime = PodRuntime(workload, netns_fd, pool=ctx.pool, tracker=ctx.tracker)
        out_sock, plain_sock, hbone_sock = socks
        loop = asyncio.get_running_loop()
        servers: list[asyncio.Server] = []
        hbone: HboneListener | None = None
        try:
            servers.append(await loop.create_server(
                lambda: self._handlers.outbound(runtime), sock=out_sock))
            servers.append(await loop.create_server(
                lambda: self._handlers.plaintext(runtime), sock=plain_sock))
            hbone = self._handlers.hbone_server(runtime, context)
            # no ssl= here: the HBONE server does TLS itself so that it can count every
            # refused handshake (ztunnel/hbone/server.py)
            servers.append(await loop.create_server(hbone.protocol_factory, sock=hbone_sock))
        except BaseException:
            for server in servers:
                server.close()
            used = {s.sockets[0].fileno() for s in servers if s.sockets}
            for sock in socks:
                if sock.fileno() not in used:
                    _close(sock)
            if hbone is not None:
                await hbone.close()
            await _close_pool(runtime)
            raise
        return ServedPod(runtime, servers, hbone, ino)

    async def _stop(self, pod: ServedPod, reason: str) -> None:
        for server in pod.servers:
            server.close()
        with contextlib.suppress(Exception):
            await pod.hbone.close()
        await pod.runtime.close_connections(f"pod {reason}")
        await _close_pool(pod.runtime)
        for server in pod.servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self._executor.forget(pod.runtime.netns_fd)
        os.close(pod.runtime.netns_fd)
        self._certs.release(pod.workload.identity)


async def _close_pool(runtime: PodRuntime) -> None:
    pool, runtime.pool = runtime.pool, None
    if pool is not None:
        try:
            await pool.close()
        except Exception:  # the pod is going anyway; say so rather than fail the delete
            log.exception("closing the HBONE pool of pod %s failed", runtime.uid)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
