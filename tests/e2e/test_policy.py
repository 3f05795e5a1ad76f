"""Authorization and peer authentication on the local cluster, with curl (issue 4).

Every test removes the policies it applied (``applied`` fixture), so the rest of the suite runs
with no policy, as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import Applied, Cluster, authz, peer_authn, poll, status

LONGCONN = str(Path(__file__).parent / "tools" / "longconn.py")
CLIENT = "cluster.local/ns/default/sa/client"


def reachable(cluster: Cluster, pod: str, url: str) -> bool:
    return cluster.curl(pod, url, "-o", "/dev/null", timeout=3, check=False).returncode == 0


def test_l4_deny_by_principal_resets_the_connection(cluster: Cluster, applied: Applied) -> None:
    server = cluster.ip("server-1")
    url = f"http://{server}:8080/"
    assert reachable(cluster, "client", url)
    applied(authz("deny-client", "  selector: {matchLabels: {app: server}}\n  action: DENY\n"
                  f"  rules:\n  - from:\n    - source: {{principals: [\"{CLIENT}\"]}}\n"))
    poll("the client to be denied", lambda: not reachable(cluster, "client", url))
    proc = cluster.curl("client", url, timeout=3, check=False)
    # refused at the tunnel: the client's connection is reset, never an HTTP answer
    assert proc.returncode in (52, 56), (proc.returncode, proc.stderr)
    assert reachable(cluster, "app-node-1-1", url), "another identity is not denied"
    metrics = cluster.node_get("node-2", "http://10.77.0.12:15020/metrics")
    assert 'nodemesh_ztunnel_policy_decisions_total{policy="default/deny-client"' in metrics


def test_allow_by_principal_and_by_namespace(cluster: Cluster, applied: Applied) -> None:
    server = cluster.ip("server-1")
    url = f"http://{server}:8080/"
    applied(authz("allow-client", "  selector: {matchLabels: {app: server}}\n  action: ALLOW\n"
                  f"  rules:\n  - from:\n    - source: {{principals: [\"{CLIENT}\"]}}\n"))
    poll("app pod denied (not the allowed principal)",
         lambda: not reachable(cluster, "app-node-1-1", url))
    assert reachable(cluster, "client", url)
    applied.remove_all()
    applied(authz("allow-ns", "  action: ALLOW\n  rules:\n  - from:\n"
                  "    - source: {namespaces: [default]}\n"))
    poll("app pod allowed by namespace", lambda: reachable(cluster, "app-node-1-1", url))
    assert reachable(cluster, "client", url)
    applied(authz("allow-ns", "  action: ALLOW\n  rules:\n  - from:\n"
                  "    - source: {namespaces: [prod]}\n"))
    poll("everyone denied by namespace", lambda: not reachable(cluster, "client", url))


def test_strict_vs_permissive_for_the_outsider(cluster: Cluster, applied: Applied) -> None:
    server = cluster.ip("server-1")
    url = f"http://{server}:8080/"
    assert not reachable(cluster, "outsider", url), "STRICT is the default"
    applied(peer_authn("permissive", "PERMISSIVE"))
    reply = poll("the outsider to get through under PERMISSIVE",
                 lambda: cluster.get_json("outsider", url))
    assert reply["pod"] == "server-1"
    # policy still applies to plaintext: no principal, so a namespace rule cannot match
    applied(authz("only-default", "  action: ALLOW\n  rules:\n  - from:\n"
                  "    - source: {namespaces: [default]}\n"))
    poll("the outsider denied by policy", lambda: not reachable(cluster, "outsider", url))
    assert reachable(cluster, "client", url)
    applied(peer_authn("permissive", "STRICT"))
    applied(authz("only-default", "  action: ALLOW\n  rules:\n  - {}\n"))
    poll("STRICT again", lambda: status()["version"] and not reachable(cluster, "outsider", url))


def _loop_client(cluster: Cluster, url: str, seconds: float) -> subprocess.Popen[str]:
    """New connections back to back from the client for ``seconds``; prints one line per
    request: '<unix time> <ok|fail>'."""
    script = (
        "import subprocess,sys,time\n"
        f"end=time.time()+{seconds}\n"
        "while time.time()<end:\n"
        "    t=time.time()\n"
        f"    r=subprocess.run(['curl','-s','-o','/dev/null','--max-time','1','{url}'])\n"
        "    print(f'{t:.3f} ' + ('ok' if r.returncode==0 else 'fail'), flush=True)\n"
    )
    env = {**os.environ, "NODEMESH_STATE_DIR": str(cluster.state_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "meshctl", "local", "exec", "client", "--", sys.executable, "-c",
         script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_policy_applied_under_traffic_takes_effect_within_a_second(
        cluster: Cluster, applied: Applied) -> None:
    url = f"http://{cluster.ip('server-1')}:8080/"
    proc = _loop_client(cluster, url, 6.0)
    try:
        time.sleep(2.0)
        started_apply = time.time()
        applied(authz("deny-all", "  action: DENY\n  rules:\n  - {}\n"))
        # the change exists once `meshctl apply` has written it to the watched directory
        applied_at = time.time()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    results = [(float(t), r) for t, r in (ln.split() for ln in out.splitlines() if ln.strip())]
    before = [r for t, r in results if t < started_apply - 0.5]
    assert before and all(r == "ok" for r in before), results
    after = [(t, r) for t, r in results if t > applied_at + 1.0]
    assert after and all(r == "fail" for _, r in after), (applied_at, results, err)


def test_established_connection_is_closed_by_a_new_deny(cluster: Cluster, applied: Applied,
                                                      tmp_path: Path) -> None:
    server = cluster.ip("server-1")
    env = {**os.environ, "NODEMESH_STATE_DIR": str(cluster.state_dir)}
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "local", "exec", "client", "--", sys.executable,
         LONGCONN, server, "8080", "--duration", "60", "--interval", "0.05", "--stop-file",
         str(stop)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        applied(authz("deny-client", "  action: DENY\n  rules:\n  - from:\n"
                      f"    - source: {{principals: [\"{CLIENT}\"]}}\n"))
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            stop.touch()
            proc.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["error"] is not None and result["requests"] > 0, result
    metrics = cluster.node_get("node-2", "http://10.77.0.12:15020/metrics")
    assert "nodemesh_ztunnel_policy_closed_connections_total 1" in metrics or \
        "nodemesh_ztunnel_policy_closed_connections_total" in metrics


BAD_POLICY = """\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  action: BLOCK
  rules:
  - from:
    - source:
        ipBlocks: ["10.78.0.0/33"]
"""


def test_validate_and_controller_rejections_keep_the_last_good_policy(
        cluster: Cluster, applied: Applied, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    proc = cluster.meshctl("policy", "validate", str(bad), check=False)
    assert proc.returncode == 1
    assert f"{bad}:5: AuthorizationPolicy default/deny-client: spec.action: unknown action" \
        in proc.stderr, proc.stderr
    # `apply` refuses it too, writing nothing
    assert cluster.meshctl("apply", "-f", str(bad), check=False).returncode == 1

    url = f"http://{cluster.ip('server-1')}:8080/"
    applied(authz("deny-client", "  action: DENY\n  rules:\n  - from:\n"
                  f"    - source: {{principals: [\"{CLIENT}\"]}}\n"))
    poll("the client to be denied", lambda: not reachable(cluster, "client", url))
    # an operator edits the file in the watched dir by hand, badly
    config_file = next(p for p in (cluster.state_dir / "config").iterdir()
                       if "deny-client" in p.name)
    good_text = config_file.read_text()
    config_file.write_text(BAD_POLICY)
    try:
        issue = poll("the rejection in /debug/status", lambda: next(
            (e for e in status()["configErrors"] if "deny-client" in e["object"]), None))
        assert issue["field"] == "spec.action" and "unknown action" in issue["message"]
        shown = cluster.meshctl("status").stdout
        assert "AuthorizationPolicy default/deny-client: spec.action" in shown, shown
        metrics = urllib.request.urlopen("http://10.77.0.1:15014/metrics", timeout=5).read()
        assert b"nodemesh_controller_config_rejections_total" in metrics
        time.sleep(1.0)
        assert not reachable(cluster, "client", url), "the last good DENY must stay enforced"
    finally:
        config_file.write_text(good_text)
    poll("the error to clear", lambda: not [
        e for e in status()["configErrors"] if "deny-client" in e["object"]])


def test_explain_against_the_live_configuration(cluster: Cluster, applied: Applied) -> None:
    applied(authz("deny-client", "  action: DENY\n  rules:\n  - from:\n"
                  f"    - source: {{principals: [\"{CLIENT}\"]}}\n"))
    poll("policy in force", lambda: status()["authorizationPolicies"] == 1)
    dump = poll("the policy on node-2", lambda: cluster.admin("node-2", "/config_dump")
                ["authorizationPolicies"])
    assert dump[0]["name"] == "deny-client" and dump[0]["spec"]["rules"], dump
    out = cluster.meshctl("policy", "explain", "--from", "default/client", "--to",
                          "server-1:8080").stdout
    assert out.startswith("DENY") and "default/deny-client" in out and "rules[0]" in out, out
    out = cluster.meshctl("policy", "explain", "--from", "default/app", "--to",
                          "server-1:8080").stdout
    assert out.startswith("ALLOW"), out


def test_l7_deny_403_while_another_path_on_the_same_connection_is_allowed(
        cluster: Cluster, applied: Applied) -> None:
    server = cluster.ip("server-1")
    applied(authz("deny-admin", "  selector: {matchLabels: {app: server}}\n  action: DENY\n"
                  "  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}\n"))

    def two_on_one_connection() -> list[str]:
        # curl reuses one connection for both URLs: num_connects is 0 for the second
        proc = cluster.exec("client", "curl", "-sS", "--max-time", "3", "-o", "/dev/null",
                            "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                            f"http://{server}:8080/admin/x", f"http://{server}:8080/",
                            check=False)
        got = proc.stdout.split("\n")[:2]
        if got != ["403 1", "200 0"]:
            raise AssertionError(f"{got} {proc.stderr}")
        return got

    poll("the L7 deny", two_on_one_connection)
    body = cluster.curl("client", f"http://{server}:8080/admin").stdout
    assert body == "RBAC: access denied", body
    metrics = cluster.node_get("node-2", "http://10.77.0.12:15020/metrics")
    assert 'response_code="403"' in metrics and "istio_requests_total{" in metrics
    assert "istio_request_duration_milliseconds_bucket{" in metrics
    out = cluster.meshctl("policy", "explain", "--from", "default/client", "--to",
                          "server-1:8080", "--path", "/admin/x").stdout
    assert out.startswith("DENY") and "default/deny-admin" in out, out


def test_dry_run_policy_is_counted_not_enforced(cluster: Cluster, applied: Applied) -> None:
    server = cluster.ip("server-1")
    applied(authz("deny-all-dry", "  action: DENY\n  rules:\n  - {}\n",
                  annotations="  annotations: {nodemesh.io/dry-run: \"true\"}\n"))
    poll("policy in force", lambda: status()["authorizationPolicies"] == 1)
    assert reachable(cluster, "client", f"http://{server}:8080/")
    metrics = cluster.node_get("node-2", "http://10.77.0.12:15020/metrics")
    assert ('nodemesh_ztunnel_policy_decisions_total{policy="default/deny-all-dry",'
            'result="dry_run_deny"') in metrics, metrics


def test_root_namespace_policy_applies_mesh_wide(cluster: Cluster, applied: Applied) -> None:
    url = f"http://{cluster.ip('server-2')}:8080/"
    applied(authz("mesh-deny-client", "  action: DENY\n  rules:\n  - from:\n"
                  f"    - source: {{principals: [\"{CLIENT}\"]}}\n", ns="nodemesh-system"))
    poll("the client denied by the mesh-wide policy",
         lambda: not reachable(cluster, "client", url))
    assert reachable(cluster, "app-node-2-1", url)
