"""The node agent on Kubernetes, against a node of the local cluster.

node-1's agent is replaced by one started with ``--source kubernetes``: it watches a fake API
server (the real ``kubernetes`` client, the real list/watch protocol) that serves the same YAML
the local cluster's controller reads, plus the objects a DaemonSet install would have. Then:

* pods that predate the agent are found by scanning /proc and stay redirected; the agent
  annotates them ``nodemesh.io/redirection: enabled``;
* the CNI plugin binary, invoked exactly as a container runtime does (``CNI_COMMAND=ADD``,
  ``CNI_NETNS``, ``CNI_ARGS``, the config with ``prevResult`` on stdin), returns only once a
  brand-new pod is redirected: its first connection, made right after the call returns, is
  mutual TLS with its identity; DEL releases it; a pod of a namespace that is not enrolled
  passes straight through;
* the plugin is chained into the node's CNI config, and an uninstall (SIGTERM once the
  DaemonSet is deleted) takes the redirection out of every pod and removes the plugin and its
  entry, leaving pods working unmeshed; a plain restart leaves everything in place, and while
  the agent is down a pod of a namespace outside the mesh still starts (the agent's fallback
  list) while an enrolled one waits.

The fixture restores node-1's own agent afterwards, whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.cni import fallback
from tests.e2e.conftest import Cluster, metric, poll
from tests.fakes.kubenode import (
    ExtraPod,
    KubeNode,
    build_cni_plugin,
    in_pod,
    kube_node_agent,
    make_pod,
    pod_object,
    remove_pod,
)

NEWCOMER_ID = "spiffe://cluster.local/ns/default/sa/newcomer"
#: the new pods (node-1's pod network is 10.78.1.0/24; the cluster's own pods use low addresses)
NEW_IP = "10.78.1.201"
PLAIN_IP = "10.78.1.202"
DOWN_IP = "10.78.1.203"


@pytest.fixture(scope="session")
def cni_plugin() -> Path:
    return build_cni_plugin()


@pytest.fixture
def kube_node(cluster: Cluster, tmp_path: Path, cni_plugin: Path) -> Iterator[KubeNode]:
    def restored() -> None:
        def all_redirected() -> bool:
            pods = cluster.pods()
            return all(p.get("redirection") == "redirected" for p in pods.values()
                       if p["node"] == "node-1" and p["enrolled"])

        poll("node-1's own agent to report its pods redirected again", all_redirected,
             timeout=30)
        assert cluster.redirection("client")

    with kube_node_agent(cluster.state_dir, cluster.meshctl, tmp_path, cni_plugin,
                         restored) as node:
        yield node


@pytest.fixture
def extra_pods() -> Iterator[list[ExtraPod]]:
    """New pod sandboxes on node-1's pod network; removed by name afterwards."""
    made: list[ExtraPod] = []
    yield made
    for p in made:
        remove_pod(p)


def new_pod(made: list[ExtraPod], suffix: str, ip: str) -> ExtraPod:
    made.append(pod := make_pod(suffix, ip))
    return pod


def test_existing_pods_found_in_proc_and_annotated(
    kube_node: KubeNode, cluster: Cluster
) -> None:
    poll("the kubernetes agent to redirect client and server-2 (netns found in /proc)",
         lambda: kube_node.pod_state("client") == "redirected"
         and kube_node.pod_state("server-2") == "redirected", timeout=30)
    pods = {p["name"]: p for p in kube_node.status()["pods"]}
    for name in ("client", "server-2"):
        netns = pods[name]["netns"]
        assert os.path.realpath(netns) == os.path.realpath(f"/run/netns/nm-pod-default-{name}")
    assert kube_node.status()["kubernetes"]["watches"]["pods"]["synced"]
    poll("the redirection annotation on client",
         lambda: kube_node.annotation("default", "client") == "enabled", timeout=15)
    # pods of node-2 are not this node's business
    assert kube_node.annotation("default", "server-1") is None
    # the plugin got chained into the node's primary CNI config
    conf = poll("our entry in the CNI config list", lambda: [
        p for p in json.loads((kube_node.conf_dir / "10-podnet.conflist").read_text())["plugins"]
        if p["type"] == "nodemesh-cni"])
    assert conf and (kube_node.bin_dir / "nodemesh-cni").is_file()
    assert cluster.redirection("client")
    # the DaemonSet's readiness probe agrees
    probe = [sys.executable, "-m", "node_agent.probe", "--ready",
             str(kube_node.status_file)]
    poll("the readiness probe to pass", lambda: subprocess.run(probe).returncode == 0)


def test_cni_add_returns_only_once_the_new_pod_is_redirected(
    kube_node: KubeNode, cluster: Cluster, extra_pods: list[ExtraPod]
) -> None:
    poll("the kubernetes agent to be synced and the plugin installed",
         lambda: kube_node.status().get("kubernetes", {}).get("cniInstalled"), timeout=30)
    pod = new_pod(extra_pods, "a", NEW_IP)
    uid = str(uuid.uuid4())
    # a service account no other pod has: the controller must sign its certificate for a pod
    # that is scheduled but has no IP yet (the kubelet reports the IP only after the sandbox)
    obj = pod_object("newpod", "default", "newcomer", uid)
    kube_node.fake.apply(obj)
    manifest = kube_node.tmp / "newpod.yaml"
    manifest.write_text(json.dumps(obj))
    cluster.meshctl("apply", "-f", str(manifest))
    try:
        _add_and_use(kube_node, cluster, pod, uid)
    finally:
        cluster.meshctl("delete", "-f", str(manifest), check=False)


def _add_and_use(kube_node: KubeNode, cluster: Cluster, pod: ExtraPod, uid: str) -> None:
    started = time.time()
    res = kube_node.cni("ADD", pod.netns, "default", "newpod", uid, NEW_IP, "sandbox-a")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{kube_node.log()}"
    result = json.loads(res.stdout)
    assert result["ips"] == [{"address": f"{NEW_IP}/24", "gateway": "10.78.1.1", "interface": 0}]
    # node-1's one metrics endpoint now carries this agent's count and time of that ADD (the
    # agent is new for this test: it was the first CNI request it served)
    text = cluster.node_metrics("node-1")
    assert metric(text, "nodemesh_agent_scrape_up") == 1
    assert metric(text, "nodemesh_agent_info", node="node-1", mode=cluster.mode,
                  source="kubernetes") == 1
    assert metric(text, "nodemesh_agent_cni_requests_total", command="ADD", result="ok") == 1
    assert metric(text, "nodemesh_agent_cni_request_duration_seconds_count", command="ADD") == 1
    took = metric(text, "nodemesh_agent_cni_request_duration_seconds_sum", command="ADD")
    assert took is not None and 0 < took < 30
    relists = metric(text, "nodemesh_agent_watch_relists_total", resource="pods")
    assert relists is not None and relists >= 1
    # the very first connection after ADD returned is captured: server-1 refuses plaintext, so
    # an answer at all means mutual TLS, and node-2 records the new pod's identity
    reply = in_pod(pod, "curl", "-sS", "--max-time", "5",
                   f"http://{cluster.ip('server-1')}:8080/")
    assert reply.returncode == 0, reply.stderr
    assert json.loads(reply.stdout)["pod"] == "server-1"
    rec = poll("node-2's record of the new pod's connection",
               lambda: cluster.inbound_record("node-2", NEW_IP, started))
    assert rec["srcIdentity"] == NEWCOMER_ID and rec["tlsVersion"] == "TLSv1.3"
    poll("newpod annotated enabled",
         lambda: kube_node.annotation("default", "newpod") == "enabled", timeout=15)

    # CHECK agrees; DEL releases the pod (the ztunnel stops serving it)
    check = kube_node.cni("CHECK", pod.netns, "default", "newpod", uid, NEW_IP, "sandbox-a")
    assert check.returncode == 0, check.stdout
    res = kube_node.cni("DEL", pod.netns, "default", "newpod", uid, NEW_IP, "sandbox-a")
    assert res.returncode == 0 and res.stdout == "", res.stdout
    text = cluster.node_metrics("node-1")
    assert metric(text, "nodemesh_agent_cni_requests_total", command="DEL", result="ok") == 1
    assert metric(text, "nodemesh_agent_cni_requests_total", command="CHECK", result="ok") == 1
    poll("the ztunnel to stop serving the deleted sandbox", lambda: NEW_IP not in {
        p.get("ip") for p in cluster.admin("node-1", "/config_dump")["pods"]})


def test_cni_add_of_a_pod_outside_the_mesh_passes_through(
    kube_node: KubeNode, extra_pods: list[ExtraPod]
) -> None:
    poll("the kubernetes agent to be synced",
         lambda: kube_node.status().get("kubernetes", {}).get("synced"), timeout=30)
    pod = new_pod(extra_pods, "b", PLAIN_IP)
    uid = str(uuid.uuid4())
    obj = pod_object("plainpod", "default", "client", uid)
    obj["metadata"]["labels"]["nodemesh.io/dataplane-mode"] = "none"  # opted out
    kube_node.fake.apply(obj)
    res = kube_node.cni("ADD", pod.netns, "default", "plainpod", uid, PLAIN_IP, "sandbox-b")
    assert res.returncode == 0, res.stdout
    assert json.loads(res.stdout)["ips"][0]["address"] == f"{PLAIN_IP}/24"
    assert kube_node.pod_state("plainpod") is None
    # a pod the API server does not know (yet): the sandbox fails with the reason, to be retried
    res = kube_node.cni("ADD", pod.netns, "default", "ghost", str(uuid.uuid4()), PLAIN_IP, "s-c")
    assert res.returncode != 0
    err = json.loads(res.stdout)
    assert err["code"] == 11 and "not known to the API server" in err["msg"], err


def test_restart_keeps_pods_and_uninstall_releases_them(
    kube_node: KubeNode, cluster: Cluster, extra_pods: list[ExtraPod]
) -> None:
    poll("client redirected by the kubernetes agent",
         lambda: kube_node.pod_state("client") == "redirected", timeout=30)
    poll("our CNI entry", lambda: kube_node.status().get("kubernetes", {}).get("cniInstalled"))
    poll("the CNI fallback list", lambda: kube_node.fallback_file.exists())
    listed = fallback.parse(kube_node.fallback_file.read_bytes())
    assert {"legacy", "nodemesh-system", "kube-system"} <= set(listed) and "default" not in listed
    # a restart (the DaemonSet still exists): nothing is removed
    kube_node.stop()
    assert cluster.redirection("client")
    assert "nodemesh-cni" in (kube_node.conf_dir / "10-podnet.conflist").read_text()
    # while the agent is down, a pod outside the mesh starts (its namespace is on the agent's
    # fallback list); an enrolled one waits for the agent (the kubelet retries)
    plain = new_pod(extra_pods, "d", DOWN_IP)
    res = kube_node.cni("ADD", plain.netns, "legacy", "latecomer", str(uuid.uuid4()), DOWN_IP,
                        "sandbox-d")
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert json.loads(res.stdout)["ips"][0]["address"] == f"{DOWN_IP}/24"
    assert "namespace legacy is on the fallback list" in res.stderr
    res = kube_node.cni("ADD", plain.netns, "default", "waiter", str(uuid.uuid4()), DOWN_IP,
                        "sandbox-e")
    assert res.returncode == 1
    err = json.loads(res.stdout)
    assert err["code"] == 11 and "namespace default is not on the fallback list" in err["msg"]
    kube_node.start()
    poll("client redirected after the restart",
         lambda: kube_node.pod_state("client") == "redirected", timeout=30)

    # an uninstall: the DaemonSet is deleted, then its pods get SIGTERM
    kube_node.fake.delete("DaemonSet", "nodemesh-system", "nodemesh-node")
    kube_node.stop()
    assert kube_node.proc is not None and kube_node.proc.returncode == 0, kube_node.log()
    assert cluster.redirection("client") == [], kube_node.log()
    assert cluster.redirection("server-2") == []
    conf = json.loads((kube_node.conf_dir / "10-podnet.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["bridge"]
    assert not (kube_node.bin_dir / "nodemesh-cni").exists()
    assert not kube_node.fallback_file.exists()
    # pods keep working, unmeshed: client reaches server-2 (same node, itself unmeshed now)
    reply = cluster.curl("client", f"http://{cluster.ip('server-2')}:8080/")
    assert json.loads(reply.stdout)["pod"] == "server-2"
