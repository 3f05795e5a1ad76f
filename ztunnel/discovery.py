"""Client of the controller's discovery stream (meshapi/discovery.py has the contract).

``GET https://<controller>/v1/discovery?epoch=E&version=V`` with ``Authorization: Bearer
<node token>``, the controller's certificate verified against ``--ca-root``; the answer is
ndjson, applied line by line to the :class:`meshapi.discovery.DiscoveryState` in the
:class:`MeshView`.

Invariants:

* The last good view keeps serving while disconnected; only a new snapshot replaces it.
* A line longer than ``MAX_LINE_BYTES`` or no line for ``STREAM_IDLE_TIMEOUT_SECONDS`` ends the
  stream; a delta that does not follow our version drops the resume point (next connect gets a
  snapshot); an invalid message ends the stream (counted, logged).
* Reconnects use exponential backoff with full jitter, reset after a stream that delivered data.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import aiohttp

from meshapi import discovery
from meshapi.backoff import Backoff
from meshapi.discovery import LineSplitter
from meshapi.errors import WireError
from ztunnel.errors import DiscoveryError
from ztunnel.metrics import Metrics
from ztunnel.seams import MeshView

log = logging.getLogger("ztunnel.discovery")

READ_CHUNK = 256 * 1024


class DiscoveryClient:
    def __init__(
        self,
        *,
        controller: str,
        ca_root: Path,
        token_file: Path,
        view: MeshView,
        metrics: Metrics,
        idle_timeout: float = discovery.STREAM_IDLE_TIMEOUT_SECONDS,
        connect_timeout: float = 10.0,
    ) -> None:
        self._controller = controller
        self._ca_root = ca_root
        self._token_file = token_file
        self._view = view
        self._metrics = metrics
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self.synced = asyncio.Event()
        self._backoff = Backoff()

    def _ssl(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self._ca_root))
        except (OSError, ssl.SSLError) as exc:
            raise DiscoveryError(f"cannot load --ca-root {self._ca_root}: {exc}") from exc

    def _token(self) -> str:
        try:
            return self._token_file.read_text().strip()
        except OSError as exc:
            raise DiscoveryError(f"cannot read --token-file {self._token_file}: {exc}") from exc

    async def run(self) -> None:
        """Stream until cancelled."""
        while True:
            reason = "closed"
            try:
                got_data = await self._stream_once()
                if got_data:
                    self._backoff.reset()
            except DiscoveryError as exc:
                reason = "error"
                log.warning("discovery stream: %s", exc)
            except (aiohttp.ClientError, OSError) as exc:
                reason = "connect_failed"
                log.warning("discovery stream to %s failed: %s — is the controller up and "
                            "--ca-root its CA?", self._controller, exc)
            except TimeoutError:
                reason = "idle_timeout"
                log.warning("discovery stream idle for %.0fs; reconnecting", self._idle_timeout)
            finally:
                self._set_connected(False)
            self._metrics.discovery_reconnects.labels(reason).inc()
            await asyncio.sleep(self._backoff.next())

    def _set_connected(self, value: bool) -> None:
        self._view.connected = value
        self._metrics.discovery_connected.set(1 if value else 0)

    async def _stream_once(self) -> bool:
        url = f"https://{self._controller}/v1/discovery"
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/x-ndjson"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout,
                                        connect=self._connect_timeout)
        got_data = False
        connector = aiohttp.TCPConnector(ssl=self._ssl())
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.get(
                url, params=dict(self._view.state.resume_params()), headers=headers
            ) as resp:
                if resp.status != 200:
                    body = (await resp.content.read(1024)).decode(errors="replace")
                    raise DiscoveryError(
                        f"controller answered {resp.status} to GET /v1/discovery: {body.strip()}"
                        + (" — check --token-file" if resp.status in (401, 403) else "")
                    )
                self._set_connected(True)
                splitter = LineSplitter()
                while True:
                    async with asyncio.timeout(self._idle_timeout):
                        chunk = await resp.content.readany()
                    if not chunk:
                        return got_data
                    try:
                        lines = list(splitter.feed(chunk))
                    except WireError as exc:
                        raise DiscoveryError(str(exc)) from exc
                    for line in lines:
                        self.apply_line(line)
                        got_data = True

    def apply_line(self, line: bytes) -> None:
        state = self._view.state
        try:
            message, change = state.apply_line(line)
        except WireError as exc:
            self._metrics.discovery_messages.labels("invalid").inc()
            raise DiscoveryError(f"invalid discovery message: {exc}") from exc
        self._metrics.discovery_messages.labels(message.type).inc()
        self._view.changed(change)
        if state.synced:
            self.synced.set()
