"""Client of the controller's discovery stream (``meshapi.discovery``).

Invariants: the last good state stays in force while disconnected (nothing is cleared on a
failure); a delta that does not follow our version drops the resume point so the next connection
gets a fresh snapshot; every line is bounded (``MAX_LINE_BYTES``) and the stream is declared dead
after ``STREAM_IDLE_TIMEOUT_SECONDS`` without a line; reconnects back off with jitter.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import aiohttp

from meshapi import discovery
from meshapi.backoff import Backoff
from meshapi.discovery import LineSplitter
from meshapi.errors import WireError
from meshapi.model import Workload
from node_agent.errors import DiscoveryError

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 64 * 1024


class DiscoveryClient:
    def __init__(
        self,
        controller: str,
        ca_root: Path,
        token_file: Path,
        on_change: Callable[[], None] = lambda: None,
        idle_timeout: float = discovery.STREAM_IDLE_TIMEOUT_SECONDS,
        max_line: int = discovery.MAX_LINE_BYTES,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = f"https://{controller}/v1/discovery"
        self.ca_root = ca_root
        self.token_file = token_file
        self.state = discovery.DiscoveryState()
        self.connected = False
        self.last_error: str | None = None
        self._on_change = on_change
        self._idle = idle_timeout
        self._max_line = max_line
        self._backoff = backoff or Backoff(base=0.2, cap=30.0)
        self._synced = asyncio.Event()

    @property
    def workloads(self) -> Mapping[str, Workload]:
        return self.state.workloads

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def _ssl(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.ca_root))
        except (OSError, ssl.SSLError) as exc:
            raise DiscoveryError(f"cannot load --ca-root {self.ca_root}: {exc}") from exc

    def _token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise DiscoveryError(f"cannot read --token-file {self.token_file}: {exc}") from exc
        if not token:
            raise DiscoveryError(f"--token-file {self.token_file} is empty")
        return token

    async def run(self) -> None:
        while True:
            try:
                await self.stream_once()
                self.last_error = "the controller ended the stream"
            except (DiscoveryError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.last_error = str(exc) or type(exc).__name__
            self.connected = False
            delay = self._backoff.next()
            log.warning("discovery %s: %s; reconnecting in %.2fs", self.url, self.last_error, delay)
            await asyncio.sleep(delay)

    async def stream_once(self) -> None:
        ctx = self._ssl()
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/x-ndjson"}
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_SECONDS)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(
                self.url, params=dict(self.state.resume_params()), headers=headers, ssl=ctx
            ) as resp,
        ):
            if resp.status != 200:
                body = (await resp.content.read(512)).decode(errors="replace")
                hint = " — check --token-file" if resp.status in (401, 403) else ""
                raise DiscoveryError(f"controller answered {resp.status}: {body}{hint}")
            self.connected = True

            async def chunks() -> AsyncIterator[bytes]:
                while True:
                    try:
                        async with asyncio.timeout(self._idle):
                            chunk = await resp.content.readany()
                    except TimeoutError as exc:
                        raise DiscoveryError(
                            f"no message from the controller for {self._idle}s"
                        ) from exc
                    if not chunk:
                        return
                    yield chunk

            splitter = LineSplitter(self._max_line)
            async for chunk in chunks():
                try:
                    lines = list(splitter.feed(chunk))
                except WireError as exc:
                    raise DiscoveryError(str(exc)) from exc
                for line in lines:
                    self.handle_line(line)

    def handle_line(self, line: bytes) -> None:
        try:
            _, change = self.state.apply_line(line)
        except WireError as exc:
            raise DiscoveryError(f"malformed or out-of-order discovery message: {exc}") from exc
        self._backoff.reset()
        if self.state.synced:
            self._synced.set()
        if not change.empty:
            self._on_change()
