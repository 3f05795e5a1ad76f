from __future__ import annotations

import io
import json

from ztunnel.connlog import RING_SIZE, ConnLog, ConnRecord
from ztunnel.metrics import ConnLabels, Metrics


def test_records_metrics_access_log_and_ring() -> None:
    metrics = Metrics()
    out = io.StringIO()
    log = ConnLog(metrics, stream=out)
    labels = ConnLabels(reporter="source", source_workload="a",
                        connection_security_policy="mutual_tls")
    records = [log.opened(ConnRecord("outbound", "uid-a", f"10.0.0.1:{i}", "10.0.0.2:80", labels))
               for i in range(RING_SIZE + 5)]
    log.closed(records[-1], bytes_sent=10, bytes_received=20)
    log.closed(records[-1], bytes_sent=99)  # a second close is ignored
    newest = log.recent(2)
    assert [r["src"] for r in newest] == [f"10.0.0.1:{RING_SIZE + 4}", f"10.0.0.1:{RING_SIZE + 3}"]
    assert newest[0]["end"] is not None and newest[1]["end"] is None
    assert newest[0]["bytesSent"] == 10 and newest[0]["bytesReceived"] == 20
    assert len(log.recent(10_000)) == RING_SIZE
    line = json.loads(out.getvalue())
    assert line["direction"] == "outbound" and line["result"] == "ok"
    assert set(line) >= {"start", "end", "pod", "src", "dst", "srcIdentity", "dstIdentity",
                         "tlsVersion", "securityPolicy", "bytesSent", "bytesReceived"}
    sample = {"reporter": "source", "source_workload": "a", "source_workload_namespace": "unknown",
              "source_principal": "unknown", "destination_workload": "unknown",
              "destination_workload_namespace": "unknown", "destination_principal": "unknown",
              "destination_service": "unknown", "connection_security_policy": "mutual_tls",
              "response_flags": "-"}
    r = metrics.registry
    assert r.get_sample_value("istio_tcp_connections_opened_total", sample) == RING_SIZE + 5
    assert r.get_sample_value("istio_tcp_connections_closed_total", sample) == 1
    assert r.get_sample_value("istio_tcp_received_bytes_total", sample) == 10
    assert r.get_sample_value("istio_tcp_sent_bytes_total", sample) == 20
