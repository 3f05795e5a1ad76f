"""Configuration changes through ``meshctl apply``: enrollment takes effect without restarting
anything, and a bad object is rejected by the controller (named by file, object and field) while
the last good configuration stays in force."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cluster, poll

ENROLLED_NS = ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"
               "  labels: {nodemesh.io/dataplane-mode: enabled}\n")
UNENROLLED_NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n"


def controller_status() -> dict[str, Any]:
    with urllib.request.urlopen("http://10.77.0.1:15014/debug/status", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_unenroll_and_reenroll_namespace_without_restarts(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    pids = {c: cluster.pid("node-1", c) for c in ("agent", "ztunnel")}
    server_ip = cluster.ip("server-1")
    client_ip = cluster.ip("client")
    try:
        cluster.apply(UNENROLLED_NS, tmp_path)
        poll("the client pod's redirection to be removed",
             lambda: not cluster.redirection("client"))
        poll("pods listed as not enrolled", lambda: not cluster.pods()["client"]["enrolled"])
        # plain pod-to-pod traffic now, nothing recorded by the destination ztunnel
        started = time.time()
        reply = poll("plaintext request", lambda: cluster.get_json(
            "client", f"http://{server_ip}:8080/"))
        assert reply["pod"] == "server-1"
        assert reply["peer"].startswith(client_ip + ":"), "the app should see the client itself"
        assert cluster.inbound_record("node-2", client_ip, started) is None
    finally:
        cluster.apply(ENROLLED_NS, tmp_path)
    poll("the client pod to be redirected again",
         lambda: cluster.pods()["client"].get("redirection") == "redirected"
         and cluster.redirection("client"))
    poll("the server pod to be redirected again",
         lambda: cluster.pods()["server-1"].get("redirection") == "redirected")
    started = time.time()
    reply = poll("mesh request", lambda: cluster.get_json("client", f"http://{server_ip}:8080/"))
    rec = poll("inbound record", lambda: cluster.inbound_record("node-2", client_ip, started))
    assert rec["securityPolicy"] == "mutual_tls"
    assert {c: cluster.pid("node-1", c) for c in ("agent", "ztunnel")} == pids


def test_pod_label_none_opts_out(cluster: Cluster, tmp_path: Path) -> None:
    config = cluster.state_dir / "config"
    pod_file = next(p for p in config.iterdir() if p.name.endswith(".default.server-2.yaml"))
    original = pod_file.read_text()
    opted_out = original.replace("app: server", "app: server\n    nodemesh.io/dataplane-mode: none")
    assert opted_out != original, original
    try:
        cluster.apply(opted_out, tmp_path, "server-2.yaml")
        poll("server-2 to be unenrolled", lambda: not cluster.pods()["server-2"]["enrolled"])
        poll("server-2's redirection to be removed",
             lambda: not cluster.redirection("server-2"))
    finally:
        cluster.apply(original, tmp_path, "server-2.yaml")
    poll("server-2 to be redirected again",
         lambda: cluster.pods()["server-2"].get("redirection") == "redirected")


def test_bad_object_is_rejected_and_last_good_stays(cluster: Cluster, tmp_path: Path) -> None:
    bad = ("apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: default}\n"
           "spec:\n  clusterIP: 10.96.0.10\n  selector: {app: server}\n"
           "  ports: [{name: http, port: eighty, targetPort: 8080}]\n")
    # written straight into the watched directory, as an operator editing files would
    bad_file = cluster.state_dir / "config" / "zz-broken-service.yaml"
    bad_file.write_text(bad)
    try:
        issue = poll("the controller to report the bad object", lambda: next(
            (e for e in controller_status()["configErrors"]
             if e["file"].endswith("zz-broken-service.yaml")), None))
        assert "Service default/server" in issue["object"], issue
        assert issue["field"] == "spec.ports[0].port", issue
        # the last good definition of the service is still in force
        reply = cluster.get_json("client", "http://10.96.0.10/")
        assert reply is not None and reply["pod"] in ("server-1", "server-2")
        metrics = urllib.request.urlopen("http://10.77.0.1:15014/metrics", timeout=5).read()
        assert b"nodemesh_controller_config_rejections_total" in metrics
    finally:
        bad_file.unlink()
    poll("the error to clear", lambda: not [
        e for e in controller_status()["configErrors"]
        if e["file"].endswith("zz-broken-service.yaml")])
