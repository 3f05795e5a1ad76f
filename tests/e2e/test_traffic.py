"""Requests between enrolled pods go through HBONE with mutual TLS, across nodes and on one node,
by pod IP and by service VIP; the destination ztunnel records the source's identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import VIP, Cluster, poll

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
NODE_OF = {"server-1": "node-2", "server-2": "node-1"}


@pytest.mark.parametrize(("server", "what"), [("server-1", "other node"),
                                              ("server-2", "same node")])
def test_pod_ip_request_carries_identities(cluster: Cluster, server: str, what: str) -> None:
    client_ip = cluster.ip("client")
    started = time.time()
    reply = json.loads(cluster.curl("client", f"http://{cluster.ip(server)}:8080/").stdout)
    assert reply["pod"] == server, what
    rec = poll(f"inbound record on {NODE_OF[server]}",
               lambda: cluster.inbound_record(NODE_OF[server], client_ip, started))
    assert rec["srcIdentity"] == CLIENT_ID
    assert rec["dstIdentity"] == SERVER_ID
    assert rec["tlsVersion"] == "TLSv1.3"
    assert rec["securityPolicy"] == "mutual_tls"


def test_service_vip_reaches_both_replicas(cluster: Cluster) -> None:
    seen: set[str] = set()
    client_ip = cluster.ip("client")
    for _ in range(30):
        started = time.time()
        reply = json.loads(cluster.curl("client", f"http://{VIP}/").stdout)
        seen.add(reply["pod"])
        node = NODE_OF[reply["pod"]]
        rec = poll("inbound record for the VIP request",
                   lambda n=node, t=started: cluster.inbound_record(n, client_ip, t))
        assert rec["srcIdentity"] == CLIENT_ID
        if seen == {"server-1", "server-2"}:
            break
    assert seen == {"server-1", "server-2"}


def test_outsider_plaintext_to_enrolled_pod_is_refused(cluster: Cluster) -> None:
    proc = cluster.curl("outsider", f"http://{cluster.ip('server-1')}:8080/", check=False)
    assert proc.returncode != 0, proc.stdout
    # curl: 7 = connection refused, 52 = empty reply, 56 = reset by peer
    assert proc.returncode in (7, 52, 56), proc.stderr


def test_enrolled_pod_reaches_unenrolled_pod_by_passthrough(cluster: Cluster) -> None:
    # the outsider runs no app: start the sample app there for this test
    env = {**os.environ, "NODEMESH_STATE_DIR": str(cluster.state_dir)}
    app = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "local", "exec", "outsider", "--", sys.executable,
         "-m", "meshctl.sampleapp", "--port", "9000", "--name", "outsider-app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://{cluster.ip('outsider')}:9000/"
        reply = poll("the outsider's app through passthrough",
                     lambda: cluster.get_json("client", url, timeout=2))
        assert reply["pod"] == "outsider-app"
    finally:
        app.terminate()
        app.wait(10)


def test_metrics_count_mesh_connections(cluster: Cluster) -> None:
    cluster.curl("client", f"http://{cluster.ip('server-1')}:8080/")
    text = poll("destination metrics", lambda: (t := cluster.node_get(
        "node-2", "http://10.77.0.12:15020/metrics")) and
        'istio_tcp_connections_opened_total{' in t and t)
    lines = [ln for ln in text.splitlines()
             if ln.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"'
             in ln and f'source_principal="{CLIENT_ID}"' in ln]
    assert lines, text[:3000]
    assert 'connection_security_policy="mutual_tls"' in lines[0]


def test_kubelet_style_probe_from_the_node_reaches_the_app(cluster: Cluster) -> None:
    # the node's own address on the pod bridge is exempt from inbound capture, as a kubelet
    # health probe would need; anyone else's plaintext is refused (test above)
    reply = json.loads(cluster.node_get("node-2", f"http://{cluster.ip('server-1')}:8080/"))
    assert reply["pod"] == "server-1"
    assert reply["peer"].startswith("10.78.2.1:")
