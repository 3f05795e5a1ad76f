"""What must survive: an agent restart, a controller outage, certificate renewal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.conftest import CERT_TTL, Cluster, poll

LONGCONN = str(Path(__file__).parent / "tools" / "longconn.py")
GOLDEN = Path(__file__).parent.parent / "golden" / "iptables"


@contextmanager
def long_connection(cluster: Cluster, target_ip: str, stop_file: Path) -> Iterator[
        subprocess.Popen[str]]:
    env = {**os.environ, "NODEMESH_STATE_DIR": str(cluster.state_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "local", "exec", "client", "--", sys.executable,
         LONGCONN, target_ip, "8080", "--duration", "300", "--stop-file", str(stop_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first == "ready", f"long connection did not start: {first!r} {proc.stderr.read()}"
        yield proc
    finally:
        if proc.poll() is None:
            stop_file.touch()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def finish(proc: subprocess.Popen[str], stop_file: Path) -> dict[str, object]:
    stop_file.touch()
    out, err = proc.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["error"] is None, f"{result} {err}"
    return dict(result)


def nat_rules(pod_netns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", pod_netns, "iptables-legacy-save", "-t", "nat"],
                         capture_output=True, text=True, check=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("#", ":")))


def test_agent_restart_keeps_connection_and_rules(cluster: Cluster, tmp_path: Path) -> None:
    before = nat_rules("nm-pod-default-client")
    redirection = cluster.redirection("client")
    assert redirection
    with long_connection(cluster, cluster.ip("server-1"), tmp_path / "stop") as proc:
        os.kill(cluster.pid("node-1", "agent"), signal.SIGKILL)
        cluster.meshctl("local", "restart", "agent", "--node", "node-1")
        poll("the restarted agent to report the client pod redirected",
             lambda: cluster.pods()["client"].get("redirection") == "redirected")
        time.sleep(1)  # traffic keeps flowing on the long connection meanwhile
        result = finish(proc, tmp_path / "stop")
    assert int(str(result["requests"])) > 5
    after = nat_rules("nm-pod-default-client")
    assert after == before, "rules changed or duplicated"
    assert cluster.redirection("client") == redirection
    if cluster.mode == "ebpf":
        return  # the pod's eBPF link is the same pin, and no iptables rule appeared
    # and they are exactly the golden rule set of a pod with a host probe exemption
    golden = (GOLDEN / "pod-host-probe.golden").read_text()
    assert [ln for ln in after.splitlines() if "NODEMESH" in ln] == [
        ln for ln in golden.splitlines() if ln.startswith("-A")]


def test_controller_outage_keeps_traffic_and_nodes_catch_up(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    cluster.meshctl("local", "stop", "controller")
    try:
        reply = json.loads(cluster.curl("client", f"http://{cluster.ip('server-1')}:8080/").stdout)
        assert reply["pod"] == "server-1"
        json.loads(cluster.curl("client", "http://10.96.0.10/").stdout)
        # a change made while the controller is away
        cluster.apply(
            "apiVersion: v1\nkind: Service\nmetadata: {name: server-extra, namespace: default}\n"
            "spec:\n  clusterIP: 10.96.0.20\n  selector: {app: server}\n"
            "  ports: [{name: http, port: 80, targetPort: 8080}]\n", tmp_path)
    finally:
        cluster.meshctl("local", "restart", "controller")
    reply = poll("nodes to learn the service added during the outage",
                 lambda: cluster.get_json("client", "http://10.96.0.20/", timeout=2), timeout=30)
    assert reply["pod"] in ("server-1", "server-2")


def test_certificate_renewal_under_live_connection(cluster: Cluster, tmp_path: Path) -> None:
    def client_serial() -> str | None:
        for cert in cluster.admin("node-1", "/config_dump")["certificates"]:
            if cert["identity"].endswith("/ns/default/sa/client"):
                return str(cert["serial"])
        return None

    first = poll("the client's certificate", client_serial)
    with long_connection(cluster, cluster.ip("server-1"), tmp_path / "stop") as proc:
        poll("the client's certificate to be renewed",
             lambda: (s := client_serial()) is not None and s != first, timeout=CERT_TTL + 10)
        time.sleep(0.5)
        finish(proc, tmp_path / "stop")
    # new connections use the renewed certificate too
    json.loads(cluster.curl("client", f"http://{cluster.ip('server-1')}:8080/").stdout)


def test_ztunnel_restart_new_connections_work_within_a_second(cluster: Cluster) -> None:
    cluster.meshctl("local", "restart", "ztunnel", "--node", "node-2")
    # `restart` returns once the ztunnel reports ready; the agent then hands it its pods again
    started = time.monotonic()
    reply = poll("a request to the restarted node",
                 lambda: cluster.get_json("client", f"http://{cluster.ip('server-1')}:8080/",
                                          timeout=2), timeout=10, interval=0.05)
    assert reply["pod"] == "server-1"
    print(f"first successful request {time.monotonic() - started:.2f}s after ready")
