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


NODES = {"node-1": "10.77.0.11:15020", "node-2": "10.77.0.12:15020"}


def scalar(base: str, promql: str) -> float | None:
    """The value of a query that selects one series, None if it selects none."""
    result = query(base, promql)
    assert len(result) <= 1, result
    if not result:
        return None
    value = result[0]["value"]
    assert isinstance(value, list)
    return float(value[1])


def agent_matches(cluster: Cluster, base: str, node: str) -> bool:
    """What Prometheus scraped from ``node``'s endpoint has its agent's series: the ztunnel read
    them, the agent is connected to it, in the cluster's mode, and it counts as many redirected
    pods as the node has enrolled pods."""
    instance = NODES[node]
    enrolled = sum(1 for p in cluster.pods().values() if p["node"] == node and p["enrolled"])
    return (
        scalar(base, f'nodemesh_agent_scrape_up{{instance="{instance}"}}') == 1
        and scalar(base, f'nodemesh_agent_info{{instance="{instance}",node="{node}",'
                         f'mode="{cluster.mode}",source="controller"}}') == 1
        and scalar(base, f'nodemesh_agent_zds_connected{{instance="{instance}"}}') == 1
        and scalar(base, f'nodemesh_agent_pods{{instance="{instance}",state="redirected"}}')
        == enrolled
        and scalar(base, f'nodemesh_agent_pods{{instance="{instance}",state="error"}}') == 0
    )


def test_prometheus_scrapes_each_nodes_agent_through_its_endpoint(cluster: Cluster,
                                                                  prometheus: str) -> None:
    poll("all three targets up", lambda: len(query(prometheus, "up == 1")) == 3, timeout=30)
    for node in NODES:
        assert any(p["node"] == node and p["enrolled"] for p in cluster.pods().values())
        poll(f"{node}'s agent metrics in Prometheus",
             lambda node=node: agent_matches(cluster, prometheus, node), timeout=30)
    # the enrollment histogram has every pod the agent enrolled since it started
    count = scalar(prometheus, "sum(nodemesh_agent_pod_enroll_duration_seconds_count)")
    assert count is not None and count >= 2


def test_a_stopped_agent_shows_as_scrape_up_0_and_the_node_is_still_scraped(
    cluster: Cluster, prometheus: str
) -> None:
    instance = NODES["node-2"]
    poll("node-2's agent metrics in Prometheus",
         lambda: agent_matches(cluster, prometheus, "node-2"), timeout=30)
    cluster.meshctl("local", "stop", "agent", "--node", "node-2")
    try:
        # the node's endpoint keeps answering (up 1), without the agent's part
        poll("node-2 scraped with nodemesh_agent_scrape_up 0", lambda: scalar(
            prometheus, f'nodemesh_agent_scrape_up{{instance="{instance}"}}') == 0
            and scalar(prometheus, f'up{{instance="{instance}"}}') == 1
            and scalar(prometheus, f'nodemesh_agent_info{{instance="{instance}"}}') is None,
            timeout=30)
        errors = scalar(prometheus, f'nodemesh_ztunnel_agent_scrape_errors_total{{'
                                    f'instance="{instance}",reason="unreachable"}}')
        assert errors is not None and errors >= 1
        # the other node is not affected
        assert scalar(prometheus, f'nodemesh_agent_scrape_up{{instance="{NODES["node-1"]}"}}') == 1
    finally:
        cluster.meshctl("local", "start", "agent", "--node", "node-2")
    poll("node-2's restarted agent in Prometheus",
         lambda: agent_matches(cluster, prometheus, "node-2"), timeout=30)
