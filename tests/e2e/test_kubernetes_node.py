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
  entry, leaving pods working unmeshed; a plain restart leaves everything in place.

The fixture restores node-1's own agent afterwards, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshctl.local import processes
from meshctl.local.cgroups import cgroup2_mount, subtree
from meshctl.local.layout import Layout
from meshctl.local.topology import POD_BRIDGE
from tests.e2e.conftest import Cluster, poll
from tests.fakes.kubeapi import FakeKubeApi

REPO = Path(__file__).resolve().parents[2]
TOKEN = "nodemesh-node-agent-e2e-token-0123456789"
AGENT_RBAC = [
    ("get", "pods"), ("list", "pods"), ("watch", "pods"), ("patch", "pods"),
    ("get", "namespaces"), ("list", "namespaces"), ("watch", "namespaces"),
    ("get", "daemonsets.apps"),
]
NEWCOMER_ID = "spiffe://cluster.local/ns/default/sa/newcomer"
#: the new pod (node-1's pod network is 10.78.1.0/24; the cluster's own pods use low addresses)
NEW_IP = "10.78.1.201"
PLAIN_IP = "10.78.1.202"
PRIMARY_CONF = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}],
}


@pytest.fixture(scope="session")
def cni_plugin() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "cni")], check=True, capture_output=True)
    binary = REPO / "cni" / "build" / "nodemesh-cni"
    assert os.access(binary, os.X_OK)
    return binary


@dataclass
class KubeNode:
    cluster: Cluster
    fake: FakeKubeApi
    proc: subprocess.Popen[bytes]
    argv: list[str]
    tmp: Path
    plugin: Path

    @property
    def socket(self) -> Path:
        return self.tmp / "cni.sock"

    @property
    def conf_dir(self) -> Path:
        return self.tmp / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.tmp / "bin"

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.tmp / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def pod_state(self, name: str) -> str | None:
        for p in self.status().get("pods", []):
            if p["name"] == name:
                return str(p["status"])
        return None

    def annotation(self, ns: str, name: str) -> str | None:
        obj = self.fake.get_object("Pod", ns, name) or {}
        return ((obj.get("metadata") or {}).get("annotations") or {}).get(
            "nodemesh.io/redirection"
        )

    def cni(self, command: str, netns: str, ns: str, name: str, uid: str, ip: str,
            container_id: str) -> subprocess.CompletedProcess[str]:
        """Call the plugin as containerd would."""
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "podnet",
            "type": "nodemesh-cni",
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": f"/run/netns/{netns}"}],
                "ips": [{"address": f"{ip}/24", "gateway": "10.78.1.1", "interface": 0}],
            },
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/run/netns/{netns}",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};"
                         f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"),
            "CNI_PATH": str(self.bin_dir),
            "NODEMESH_CNI_SOCKET": str(self.socket),
        }
        if command == "DEL":
            del conf["prevResult"]
        return subprocess.run([str(self.bin_dir / "nodemesh-cni")], input=json.dumps(conf),
                              env=env, capture_output=True, text=True, timeout=90)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        # a fresh status file: what the new process says, not what the last one said
        (self.tmp / "status.json").unlink(missing_ok=True)
        log = open(self.tmp / "agent.log", "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")[-4000:]


def _install_objects(fake: FakeKubeApi, cluster: Cluster) -> None:
    for f in sorted(Layout(cluster.state_dir).config_dir.glob("*.yaml")):
        fake.load_yaml(f)
    fake.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nodemesh-system"}})
    ds = fake.apply({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "nodemesh-node", "namespace": "nodemesh-system"},
        "spec": {"selector": {"matchLabels": {"app": "nodemesh-node"}},
                 "template": {"metadata": {"labels": {"app": "nodemesh-node"}},
                              "spec": {"containers": [{"name": "node-agent", "image": "x"}]}}},
    })
    fake.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nodemesh-node-e2e", "namespace": "nodemesh-system",
                     "labels": {"app": "nodemesh-node"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": "nodemesh-node",
                                          "uid": ds["metadata"]["uid"], "controller": True}]},
        "spec": {"nodeName": "node-1", "hostNetwork": True,
                 "containers": [{"name": "node-agent", "image": "x"}]},
        "status": {"phase": "Running"},
    })
    fake.add_token(TOKEN, username="system:serviceaccount:nodemesh-system:nodemesh-node",
                   allow=AGENT_RBAC)


@pytest.fixture
def kube_node(cluster: Cluster, tmp_path: Path, cni_plugin: Path) -> Iterator[KubeNode]:
    layout_dir = cluster.state_dir / "nodes" / "node-1"
    recorded = processes.recorded_argv(layout_dir / "agent.pid")
    assert recorded, "node-1's agent command line is not recorded"
    with FakeKubeApi(bookmark_interval=0.5).running_in_thread() as fake:
        _install_objects(fake, cluster)
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", TOKEN)
        (tmp_path / "net.d").mkdir()
        (tmp_path / "bin").mkdir()
        (tmp_path / "net.d" / "10-podnet.conflist").write_text(json.dumps(PRIMARY_CONF))
        argv = [*recorded,
                "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
                "--cni-socket", str(tmp_path / "cni.sock"),
                "--cni-bin-dir", str(tmp_path / "bin"), "--cni-conf-dir", str(tmp_path / "net.d"),
                "--cni-plugin", str(cni_plugin), "--proc-root", "/proc",
                "--pod-name", "nodemesh-node-e2e", "--pod-namespace", "nodemesh-system",
                "--status-file", str(tmp_path / "status.json")]
        cluster.meshctl("local", "stop", "agent", "--node", "node-1")
        node = KubeNode(cluster, fake, None, argv, tmp_path, cni_plugin)  # type: ignore[arg-type]
        try:
            node.start()
            yield node
        finally:
            if node.proc is not None:
                node.stop()
            cluster.meshctl("local", "start", "agent", "--node", "node-1")
            poll("node-1's own agent to report the client pod redirected again",
                 lambda: cluster.pods()["client"].get("redirection") == "redirected",
                 timeout=30)


@dataclass
class ExtraPod:
    netns: str
    veth: str
    cgroup: Path
    ip: str


@pytest.fixture
def extra_pods() -> Iterator[list[ExtraPod]]:
    """New pod sandboxes on node-1's pod network, as a primary CNI would have made them
    (netns + veth on the node's pod bridge + address); removed by name afterwards."""
    made: list[ExtraPod] = []
    yield made
    for p in made:
        subprocess.run(["ip", "netns", "del", p.netns], capture_output=True)
        subprocess.run(["ip", "-n", "nm-node-1", "link", "del", p.veth], capture_output=True)
        try:
            p.cgroup.rmdir()
        except OSError:
            pass


def make_pod(made: list[ExtraPod], suffix: str, ip: str) -> ExtraPod:
    netns, veth = f"nm-pod-kcni-{suffix}", f"nmkcni{suffix}"
    cgroup = subtree(cgroup2_mount()) / "node-1" / f"kcni-{suffix}"
    pod = ExtraPod(netns, veth, cgroup, ip)
    made.append(pod)
    for args in (["netns", "add", netns],
                 ["-n", netns, "link", "set", "lo", "up"],
                 ["link", "add", veth, "netns", "nm-node-1", "type", "veth",
                  "peer", "name", "eth0", "netns", netns],
                 ["-n", "nm-node-1", "link", "set", veth, "master", POD_BRIDGE],
                 ["-n", "nm-node-1", "link", "set", veth, "up"],
                 ["-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0"],
                 ["-n", netns, "link", "set", "eth0", "up"],
                 ["-n", netns, "route", "add", "default", "via", "10.78.1.1"]):
        subprocess.run(["ip", *args], check=True, capture_output=True)
    cgroup.mkdir(parents=True, exist_ok=True)
    return pod


def in_pod(pod: ExtraPod, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "meshctl.local.podexec", "--netns", f"/run/netns/{pod.netns}",
           "--cgroup", str(pod.cgroup), "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def pod_object(name: str, ns: str, sa: str, uid: str) -> dict[str, Any]:
    """As the API server holds a pod at sandbox creation: scheduled, no IP yet."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "serviceAccountName": sa,
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Pending"},
    }


def test_existing_pods_found_in_proc_and_annotated(kube_node: KubeNode) -> None:
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
    assert kube_node.cluster.redirection("client")
    # the DaemonSet's readiness probe agrees
    probe = [sys.executable, "-m", "node_agent.probe", "--ready",
             str(kube_node.tmp / "status.json")]
    poll("the readiness probe to pass", lambda: subprocess.run(probe).returncode == 0)


def test_cni_add_returns_only_once_the_new_pod_is_redirected(
    kube_node: KubeNode, extra_pods: list[ExtraPod]
) -> None:
    cluster = kube_node.cluster
    poll("the kubernetes agent to be synced and the plugin installed",
         lambda: kube_node.status().get("kubernetes", {}).get("cniInstalled"), timeout=30)
    pod = make_pod(extra_pods, "a", NEW_IP)
    uid = str(uuid.uuid4())
    # a service account no other pod has: the controller must sign its certificate for a pod
    # that is scheduled but has no IP yet (the kubelet reports the IP only after the sandbox)
    obj = pod_object("newpod", "default", "newcomer", uid)
    kube_node.fake.apply(obj)
    manifest = kube_node.tmp / "newpod.yaml"
    manifest.write_text(json.dumps(obj))
    cluster.meshctl("apply", "-f", str(manifest))
    try:
        _add_and_use(kube_node, pod, uid)
    finally:
        cluster.meshctl("delete", "-f", str(manifest), check=False)


def _add_and_use(kube_node: KubeNode, pod: ExtraPod, uid: str) -> None:
    cluster = kube_node.cluster
    started = time.time()
    res = kube_node.cni("ADD", pod.netns, "default", "newpod", uid, NEW_IP, "sandbox-a")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{kube_node.log()}"
    result = json.loads(res.stdout)
    assert result["ips"] == [{"address": f"{NEW_IP}/24", "gateway": "10.78.1.1", "interface": 0}]
    # the very first connection after ADD returned is captured: server-1 refuses plaintext, so
    # an answer at all means mutual TLS, and node-2 records the new pod's identity
    reply = in_pod(pod, "curl", "-sS", "--max-time", "5", f"http://{cluster.ip('server-1')}:8080/")
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
    poll("the ztunnel to stop serving the deleted sandbox", lambda: NEW_IP not in {
        p.get("ip") for p in cluster.admin("node-1", "/config_dump")["pods"]})


def test_cni_add_of_a_pod_outside_the_mesh_passes_through(
    kube_node: KubeNode, extra_pods: list[ExtraPod]
) -> None:
    poll("the kubernetes agent to be synced",
         lambda: kube_node.status().get("kubernetes", {}).get("synced"), timeout=30)
    pod = make_pod(extra_pods, "b", PLAIN_IP)
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


def test_restart_keeps_pods_and_uninstall_releases_them(kube_node: KubeNode) -> None:
    cluster = kube_node.cluster
    poll("client redirected by the kubernetes agent",
         lambda: kube_node.pod_state("client") == "redirected", timeout=30)
    poll("our CNI entry", lambda: kube_node.status().get("kubernetes", {}).get("cniInstalled"))
    # a restart (the DaemonSet still exists): nothing is removed
    kube_node.stop()
    assert cluster.redirection("client")
    assert "nodemesh-cni" in (kube_node.conf_dir / "10-podnet.conflist").read_text()
    kube_node.start()
    poll("client redirected after the restart",
         lambda: kube_node.pod_state("client") == "redirected", timeout=30)

    # an uninstall: the DaemonSet is deleted, then its pods get SIGTERM
    kube_node.fake.delete("DaemonSet", "nodemesh-system", "nodemesh-node")
    kube_node.stop()
    assert kube_node.proc.returncode == 0, kube_node.log()
    assert cluster.redirection("client") == [], kube_node.log()
    assert cluster.redirection("server-2") == []
    conf = json.loads((kube_node.conf_dir / "10-podnet.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["bridge"]
    assert not (kube_node.bin_dir / "nodemesh-cni").exists()
    # pods keep working, unmeshed: client reaches server-2 (same node, itself unmeshed now)
    reply = cluster.curl("client", f"http://{cluster.ip('server-2')}:8080/")
    assert json.loads(reply.stdout)["pod"] == "server-2"
