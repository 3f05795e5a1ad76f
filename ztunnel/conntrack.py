"""One connection tracker per pod: the metric labels and the connection record of every
connection the pod's proxy context carries, built once, in one place.

Each pod's runtime (``PodRuntime.tracker``) owns one :class:`ConnTracker`. The outbound and
inbound handlers ask it for a record when a connection is accepted by the ztunnel
(:meth:`ConnTracker.outbound`, :meth:`ConnTracker.inbound`: the Istio labels, the record for the
admin ring and the access log, ``istio_tcp_connections_opened_total``) and hand the record back
once when it ends (:meth:`ConnTracker.finished` with the splice's result, or
:meth:`ConnTracker.failed` with a reason). Everything that reports on a connection — metrics,
the access log, ``/connections`` — reads the same record, so they cannot disagree.

Label rules (Istio's): ``reporter`` is ``source`` on the pod's outgoing connections and
``destination`` on its incoming ones; a peer's workload labels come from the mesh's view of its
IP, and on mutual TLS only when that workload's identity is the identity the peer proved (an IP
alone never names a workload that the certificate does not); ``connection_security_policy`` is
``mutual_tls`` for HBONE, ``none`` for plaintext let in under PERMISSIVE, ``unknown`` for a
passthrough to outside the mesh.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from meshapi.ids import SpiffeId
from meshapi.model import Workload
from ztunnel.connlog import ConnLog, ConnRecord
from ztunnel.metrics import ConnLabels, destination_labels, source_labels, workload_name
from ztunnel.splice import SpliceResult

#: the mesh's view of an IP: the workload that has it, if any
Lookup = Callable[[ipaddress.IPv4Address], Workload | None]


def _ip(value: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def outbound_labels(pod: Workload, destination: Workload | None, service: str | None,
                    *, mutual_tls: bool) -> ConnLabels:
    return ConnLabels(
        reporter="source",
        destination_service=service or "unknown",
        connection_security_policy="mutual_tls" if mutual_tls else "unknown",
        **source_labels(pod),
        **destination_labels(destination),
    )


def inbound_labels(pod: Workload, peer: SpiffeId | None, peer_workload: Workload | None
                   ) -> ConnLabels:
    if peer is not None:
        same = peer_workload is not None and peer_workload.identity == peer
        return ConnLabels(
            reporter="destination",
            source_principal=str(peer),
            source_workload=workload_name(peer_workload) if same and peer_workload else "unknown",
            source_workload_namespace=peer.namespace,
            connection_security_policy="mutual_tls",
            **destination_labels(pod),
        )
    return ConnLabels(
        reporter="destination",
        source_workload=workload_name(peer_workload) if peer_workload else "unknown",
        source_workload_namespace=peer_workload.namespace if peer_workload else "unknown",
        connection_security_policy="none",
        **destination_labels(pod),
    )


class ConnTracker:
    def __init__(self, pod: Workload, connlog: ConnLog, lookup: Lookup) -> None:
        self._pod = pod
        self._connlog = connlog
        self._lookup = lookup

    def outbound(self, *, src: str, target: tuple[str, int], destination: Workload | None,
                 service: str | None, mutual_tls: bool) -> ConnRecord:
        """A connection from this pod, to ``target`` (HBONE to a meshed workload when
        ``mutual_tls``, else passed through)."""
        pod = self._pod
        return self._connlog.opened(ConnRecord(
            direction="outbound", pod=str(pod.uid), src=src, dst=f"{target[0]}:{target[1]}",
            labels=outbound_labels(pod, destination, service, mutual_tls=mutual_tls),
            src_identity=str(pod.identity),
            dst_identity=str(destination.identity) if mutual_tls and destination else None,
            security_policy="mutual_tls" if mutual_tls else "none",
        ))

    def inbound(self, *, src: tuple[str, int], dst: str, peer: SpiffeId | None,
                tls_version: str | None = None) -> ConnRecord:
        """A connection to this pod from ``src``: over HBONE from the verified ``peer``, or
        plaintext (``peer`` None) let in under PERMISSIVE."""
        pod = self._pod
        src_ip = _ip(src[0])
        peer_workload = self._lookup(src_ip) if src_ip is not None else None
        return self._connlog.opened(ConnRecord(
            direction="inbound", pod=str(pod.uid), src=f"{src[0]}:{src[1]}", dst=dst,
            labels=inbound_labels(pod, peer, peer_workload),
            src_identity=str(peer) if peer is not None else None,
            dst_identity=str(pod.identity),
            tls_version=tls_version if peer is not None else None,
            security_policy="mutual_tls" if peer is not None else "none",
        ))

    def finished(self, record: ConnRecord, result: SpliceResult) -> None:
        self._connlog.closed(record, result="ok" if result.error is None else "error",
                             bytes_sent=result.downstream_bytes,
                             bytes_received=result.upstream_bytes)

    def failed(self, record: ConnRecord, reason: str, response_flags: str | None = None) -> None:
        self._connlog.closed(record, result=reason, response_flags=response_flags)
