"""What the proxy logic needs from the HBONE layer and from the mesh view, as Protocols.

The HBONE layer (``ztunnel/hbone/``, ``certs.py``) is used only through the API of
docs/ZTUNNEL-INTERNAL.md; these Protocols are the subset the listeners and the outbound/inbound
logic call, so unit tests can pass fakes and the real classes are bound in ``app.py`` only.
Also :class:`MeshView`: the node's current discovery view and its routing index.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from meshapi.discovery import Change, DiscoveryState
from meshapi.ids import SpiffeId
from ztunnel.routing import MeshIndex


class CertInfoLike(Protocol):
    @property
    def identity(self) -> SpiffeId: ...
    @property
    def serial(self) -> int: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...


class ServerCert(Protocol):
    @property
    def server_context(self) -> ssl.SSLContext: ...


class CertSource(Protocol):
    """``ztunnel.certs.CertificateStore``."""

    async def acquire(self, identity: SpiffeId) -> ServerCert: ...
    def release(self, identity: SpiffeId) -> None: ...
    def infos(self) -> Sequence[CertInfoLike]: ...


ConnectSocket = Callable[[tuple[str, int]], Awaitable[socket.socket]]


class StreamPool(Protocol):
    """``ztunnel.hbone.client.HbonePool``."""

    async def open_stream(
        self,
        *,
        src: SpiffeId,
        dst: SpiffeId,
        peer: tuple[str, int],
        authority: str,
        connect_socket: ConnectSocket,
        protocol: asyncio.Protocol,
        headers: Sequence[tuple[str, str]] = (),
    ) -> asyncio.Transport: ...

    async def close(self) -> None: ...


class HboneListener(Protocol):
    """``ztunnel.hbone.server.HboneServer``."""

    def protocol_factory(self) -> asyncio.Protocol: ...
    async def close(self) -> None: ...


class MeshView:
    """The discovery state plus its routing index; rebuilt on every change."""

    def __init__(self, state: DiscoveryState | None = None) -> None:
        self.state = state or DiscoveryState()
        self.connected = False
        self.index = MeshIndex.build(self.state.workloads, self.state.services)
        self._listeners: list[Callable[[Change], None]] = []

    def changed(self, change: Change) -> None:
        if change.empty:
            return
        self.index = MeshIndex.build(self.state.workloads, self.state.services)
        for listener in self._listeners:
            listener(change)

    def on_change(self, listener: Callable[[Change], None]) -> None:
        self._listeners.append(listener)
