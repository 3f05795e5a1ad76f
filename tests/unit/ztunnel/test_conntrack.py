"""The per-pod connection tracker: one place builds every connection's Istio labels and record
(outbound over HBONE, outbound passthrough, inbound HBONE, inbound plaintext)."""

from __future__ import annotations

import io
import json

import pytest
from prometheus_client import CollectorRegistry

from meshapi.model import Workload
from tests.unit.ztunnel.helpers import workload
from ztunnel.connlog import ConnLog
from ztunnel.conntrack import ConnTracker
from ztunnel.metrics import Metrics
from ztunnel.splice import SpliceResult

CLIENT = workload("client", "10.78.1.2")
SERVER = workload("server-1", "10.78.2.2", sa="server")
OTHER_SA = workload("impostor", "10.78.1.9", sa="impostor")


def tracker(pod: Workload, *known: Workload) -> tuple[ConnTracker, Metrics, io.StringIO]:
    metrics = Metrics(CollectorRegistry())
    out = io.StringIO()
    by_ip = {w.ip: w for w in known}
    return ConnTracker(pod, ConnLog(metrics, stream=out), by_ip.get), metrics, out


def test_outbound_over_hbone() -> None:
    t, metrics, out = tracker(CLIENT)
    rec = t.outbound(src="10.78.1.2:40000", target=("10.78.2.2", 8080), destination=SERVER,
                     service="default/server", mutual_tls=True)
    assert rec.labels.values() == (
        "source", "client", "default", str(CLIENT.identity), "server-1", "default",
        str(SERVER.identity), "default/server", "mutual_tls", "-")
    assert (rec.direction, rec.src, rec.dst, rec.src_identity, rec.dst_identity,
            rec.security_policy) == ("outbound", "10.78.1.2:40000", "10.78.2.2:8080",
                                     str(CLIENT.identity), str(SERVER.identity), "mutual_tls")
    assert metrics.registry.get_sample_value(
        "istio_tcp_connections_opened_total", dict(zip(
            ("reporter", "source_workload", "source_workload_namespace", "source_principal",
             "destination_workload", "destination_workload_namespace",
             "destination_principal", "destination_service", "connection_security_policy",
             "response_flags"), rec.labels.values(), strict=True))) == 1
    t.finished(rec, SpliceResult(10, 20, None))
    line = json.loads(out.getvalue())
    assert (line["bytesSent"], line["bytesReceived"], line["result"]) == (10, 20, "ok")


def test_outbound_passthrough_has_no_peer_identity() -> None:
    t, _, _ = tracker(CLIENT)
    rec = t.outbound(src="10.78.1.2:40000", target=("1.2.3.4", 443), destination=None,
                     service=None, mutual_tls=False)
    assert rec.dst_identity is None and rec.security_policy == "none"
    assert rec.labels.connection_security_policy == "unknown"
    assert rec.labels.destination_workload == "unknown"
    assert rec.labels.destination_service == "unknown"


@pytest.mark.parametrize(
    ("peer_ip", "want_workload"),
    [("10.78.1.2", "client"),      # the IP's workload has the peer's identity: named
     ("10.78.1.9", "unknown"),     # the IP's workload has another identity: not trusted
     ("10.99.0.1", "unknown")],    # an IP nobody has
)
def test_inbound_over_hbone_names_the_peer_only_as_its_certificate_says(
        peer_ip: str, want_workload: str) -> None:
    t, _, _ = tracker(SERVER, CLIENT, OTHER_SA)
    rec = t.inbound(src=(peer_ip, 50000), dst="10.78.2.2:8080", peer=CLIENT.identity,
                    tls_version="TLSv1.3")
    assert rec.labels.reporter == "destination"
    assert rec.labels.source_workload == want_workload
    assert rec.labels.source_principal == str(CLIENT.identity)
    assert rec.labels.source_workload_namespace == "default"
    assert rec.labels.connection_security_policy == "mutual_tls"
    assert (rec.src, rec.src_identity, rec.dst_identity, rec.tls_version) == (
        f"{peer_ip}:50000", str(CLIENT.identity), str(SERVER.identity), "TLSv1.3")


def test_inbound_plaintext_has_no_identity() -> None:
    legacy = workload("outsider", "10.78.2.5", ns="legacy", enrolled=False)
    t, _, _ = tracker(SERVER, legacy)
    rec = t.inbound(src=("10.78.2.5", 50000), dst="10.78.2.2:8080", peer=None,
                    tls_version="TLSv1.3")
    assert rec.src_identity is None and rec.tls_version is None
    assert rec.security_policy == "none"
    assert rec.labels.connection_security_policy == "none"
    assert (rec.labels.source_workload, rec.labels.source_workload_namespace) == (
        "outsider", "legacy")
    assert rec.labels.source_principal == "unknown"


def test_failed_connection_is_closed_once_with_its_flags() -> None:
    t, _, out = tracker(CLIENT)
    rec = t.outbound(src="10.78.1.2:1", target=("10.78.2.2", 8080), destination=SERVER,
                     service=None, mutual_tls=True)
    t.failed(rec, "connect_refused", response_flags="UF")
    t.finished(rec, SpliceResult(1, 1, None))  # too late: the record is closed
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["result"] == "connect_refused"
    assert rec.labels.response_flags == "UF"
