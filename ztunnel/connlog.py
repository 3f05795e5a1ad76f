"""Connection records: the admin ``/connections`` ring, the access log and the Istio metrics.

Every proxied connection gets one :class:`ConnRecord` at :meth:`ConnLog.opened` (metrics
``opened``) and is finished once by :meth:`ConnLog.closed` (metrics ``closed`` and bytes, one
JSON access-log line on stderr). The ring keeps the newest :data:`RING_SIZE` records.

``bytesSent`` counts bytes from ``src`` to ``dst``, ``bytesReceived`` bytes from ``dst`` back
to ``src`` (the client's point of view, for both directions).
"""

from __future__ import annotations

import collections
import json
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Literal, TypedDict

from ztunnel.metrics import ConnLabels, Metrics

RING_SIZE = 1024

Direction = Literal["inbound", "outbound"]


class ConnRecordWire(TypedDict):
    start: str
    end: str | None
    direction: str
    pod: str
    src: str
    dst: str
    srcIdentity: str | None
    dstIdentity: str | None
    tlsVersion: str | None
    securityPolicy: str
    bytesSent: int
    bytesReceived: int
    result: str


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class ConnRecord:
    direction: Direction
    pod: str
    src: str
    dst: str
    labels: ConnLabels
    src_identity: str | None = None
    dst_identity: str | None = None
    tls_version: str | None = None
    security_policy: str = "none"
    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    end: datetime | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    result: str = "ok"

    def to_wire(self) -> ConnRecordWire:
        return {
            "start": rfc3339(self.start),
            "end": None if self.end is None else rfc3339(self.end),
            "direction": self.direction,
            "pod": self.pod,
            "src": self.src,
            "dst": self.dst,
            "srcIdentity": self.src_identity,
            "dstIdentity": self.dst_identity,
            "tlsVersion": self.tls_version,
            "securityPolicy": self.security_policy,
            "bytesSent": self.bytes_sent,
            "bytesReceived": self.bytes_received,
            "result": self.result,
        }


class ConnLog:
    def __init__(self, metrics: Metrics, stream: IO[str] | None = None) -> None:
        self._metrics = metrics
        self._stream = stream
        self._ring: collections.deque[ConnRecord] = collections.deque(maxlen=RING_SIZE)

    def opened(self, record: ConnRecord) -> ConnRecord:
        self._ring.append(record)
        self._metrics.connection_opened(record.labels)
        return record

    def closed(
        self,
        record: ConnRecord,
        *,
        result: str = "ok",
        bytes_sent: int = 0,
        bytes_received: int = 0,
        response_flags: str | None = None,
    ) -> None:
        if record.end is not None:
            return
        record.end = datetime.now(UTC)
        record.result = result
        record.bytes_sent = bytes_sent
        record.bytes_received = bytes_received
        if response_flags is not None:
            record.labels = replace(record.labels, response_flags=response_flags)
        self._metrics.connection_closed(record.labels, bytes_sent, bytes_received)
        stream = self._stream if self._stream is not None else sys.stderr
        line = json.dumps({"msg": "connection", **record.to_wire()}, separators=(",", ":"))
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (e.g. closed pipe): the ring and the metrics still have it

    def recent(self, limit: int) -> list[ConnRecordWire]:
        out: list[ConnRecordWire] = []
        for record in reversed(self._ring):
            if len(out) >= limit:
                break
            out.append(record.to_wire())
        return out
