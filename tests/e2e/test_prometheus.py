"""A real Prometheus server scrapes every node's metrics endpoint and the controller's, and sees
mesh traffic with Istio's metric names and labels."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, poll


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: nodemesh-nodes\n"
        "    static_configs: [{targets: ['10.77.0.11:15020', '10.77.0.12:15020']}]\n"
        "  - job_name: nodemesh-controller\n"
        "    static_configs: [{targets: ['10.77.0.1:15014']}]\n"
    )
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(20)


def query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_nodes_and_sees_mesh_traffic(cluster: Cluster,
                                                       prometheus: str) -> None:
    poll("all three targets up", lambda: len(query(prometheus, "up == 1")) == 3, timeout=30)
    for _ in range(3):
        cluster.curl("client", f"http://{cluster.ip('server-1')}:8080/")
    series = poll(
        "destination-side connection counts from the client",
        lambda: query(prometheus, 'istio_tcp_connections_opened_total{reporter="destination",'
                      'source_principal="spiffe://cluster.local/ns/default/sa/client",'
                      'destination_workload="server",instance="10.77.0.12:15020"}'),
        timeout=30)
    labels = series[0]["metric"]
    assert isinstance(labels, dict)
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/server"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["instance"] == "10.77.0.12:15020"
