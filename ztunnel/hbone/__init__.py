"""HBONE: HTTP/2 CONNECT over mutual TLS 1.3, client pool and server (docs/ZTUNNEL-INTERNAL.md)."""

from ztunnel.hbone.client import HbonePool
from ztunnel.hbone.connection import HboneStream
from ztunnel.hbone.server import (
    Accept,
    ConnectRequest,
    HboneServer,
    HboneServerEvents,
    LoggingServerEvents,
    Reject,
    StreamHandler,
)

__all__ = [
    "Accept",
    "ConnectRequest",
    "HbonePool",
    "HboneServer",
    "HboneServerEvents",
    "HboneStream",
    "LoggingServerEvents",
    "Reject",
    "StreamHandler",
]
