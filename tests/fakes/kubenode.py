"""A Kubernetes node made of a local-cluster node: node-1's agent replaced by one in Kubernetes
mode (``--source kubernetes``) that watches a fake API server, and pod sandboxes created as a
container runtime and its primary CNI would create them, then handed to the real CNI plugin
binary exactly as the runtime calls it. Used by ``tests/e2e/test_kubernetes_node.py`` and by the
benchmark ``bench/kubernetes.py``.

Names: sandboxes are netns ``nm-pod-kcni-<suffix>`` with host veth ``nmkcni<suffix>`` on node-1's
pod bridge and cgroup ``<cgroup2>/nodemesh/node-1/kcni-<suffix>``; :func:`remove_pod` removes
them by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.local import processes
from meshctl.local.cgroups import cgroup2_mount, subtree
from meshctl.local.layout import Layout
from meshctl.local.topology import POD_BRIDGE
from tests.fakes.kubeapi import FakeKubeApi

REPO = Path(__file__).resolve().parents[2]
TOKEN = "nodemesh-node-agent-e2e-token-0123456789"
#: what daemonset/11-rbac-node.yaml grants the agent; the fake enforces exactly this
AGENT_RBAC = [
    ("get", "pods"), ("list", "pods"), ("watch", "pods"), ("patch", "pods"),
    ("get", "namespaces"), ("list", "namespaces"), ("watch", "namespaces"),
    ("get", "daemonsets.apps"),
]
NODE = "node-1"
NODE_NETNS = "nm-node-1"
GATEWAY = "10.78.1.1"
PRIMARY_CONF = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}],
}


def build_cni_plugin() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "cni")], check=True, capture_output=True)
    binary = REPO / "cni" / "build" / "nodemesh-cni"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"make -C cni did not build {binary}")
    return binary


@dataclass
class KubeNode:
    state_dir: Path
    fake: FakeKubeApi
    argv: list[str]
    tmp: Path
    plugin: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.tmp / "cni.sock"

    @property
    def conf_dir(self) -> Path:
        return self.tmp / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.tmp / "bin"

    @property
    def fallback_file(self) -> Path:
        return self.tmp / "cni-fallback"

    @property
    def status_file(self) -> Path:
        return self.tmp / "status.json"

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def pod_state(self, name: str) -> str | None:
        for p in self.status().get("pods", []):
            if p["name"] == name:
                return str(p["status"])
        return None

    def annotation(self, ns: str, name: str) -> str | None:
        obj = self.fake.get_object("Pod", ns, name) or {}
        value = ((obj.get("metadata") or {}).get("annotations") or {}).get(
            "nodemesh.io/redirection"
        )
        return None if value is None else str(value)

    def cni(self, command: str, netns: str, ns: str, name: str, uid: str, ip: str,
            container_id: str) -> subprocess.CompletedProcess[str]:
        """Call the installed plugin as containerd would."""
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "podnet",
            "type": "nodemesh-cni",
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": f"/run/netns/{netns}"}],
                "ips": [{"address": f"{ip}/24", "gateway": GATEWAY, "interface": 0}],
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
            # what the agent writes next to its socket by default
            "NODEMESH_CNI_FALLBACK_FILE": str(self.fallback_file),
        }
        if command == "DEL":
            del conf["prevResult"]
        return subprocess.run([str(self.bin_dir / "nodemesh-cni")], input=json.dumps(conf),
                              env=env, capture_output=True, text=True, timeout=90)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        # a fresh status file: what the new process says, not what the last one said
        self.status_file.unlink(missing_ok=True)
        with open(self.tmp / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")[-4000:]


def install_objects(fake: FakeKubeApi, state_dir: Path) -> None:
    """The local cluster's own objects (the YAML its controller reads) plus what a DaemonSet
    install adds: the namespace, the DaemonSet and node-1's agent pod owned by it."""
    for f in sorted(Layout(state_dir).config_dir.glob("*.yaml")):
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
        "spec": {"nodeName": NODE, "hostNetwork": True,
                 "containers": [{"name": "node-agent", "image": "x"}]},
        "status": {"phase": "Running"},
    })
    fake.add_token(TOKEN, username="system:serviceaccount:nodemesh-system:nodemesh-node",
                   allow=AGENT_RBAC)


@contextmanager
def kube_node_agent(
    state_dir: Path,
    meshctl: Callable[..., object],
    tmp: Path,
    plugin: Path,
    restored: Callable[[], None],
) -> Iterator[KubeNode]:
    """Replace node-1's agent by a Kubernetes-mode agent for the ``with`` body; node-1's own
    agent is started again afterwards (``restored`` waits until it has taken over)."""
    recorded = processes.recorded_argv(state_dir / "nodes" / NODE / "agent.pid")
    if not recorded:
        raise RuntimeError("node-1's agent command line is not recorded")
    with FakeKubeApi(bookmark_interval=0.5).running_in_thread() as fake:
        install_objects(fake, state_dir)
        kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig", TOKEN)
        (tmp / "net.d").mkdir(exist_ok=True)
        (tmp / "bin").mkdir(exist_ok=True)
        (tmp / "net.d" / "10-podnet.conflist").write_text(json.dumps(PRIMARY_CONF))
        argv = [*recorded,
                "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
                "--cni-socket", str(tmp / "cni.sock"),
                "--cni-bin-dir", str(tmp / "bin"), "--cni-conf-dir", str(tmp / "net.d"),
                "--cni-plugin", str(plugin), "--proc-root", "/proc",
                "--pod-name", "nodemesh-node-e2e", "--pod-namespace", "nodemesh-system",
                "--status-file", str(tmp / "status.json")]
        meshctl("local", "stop", "agent", "--node", NODE)
        node = KubeNode(state_dir, fake, argv, tmp, plugin)
        try:
            node.start()
            yield node
        finally:
            node.stop()
            # node-1's status file still says what its agent reported before it was stopped:
            # remove it, so ``restored`` sees only what the restarted agent reports
            (state_dir / "nodes" / NODE / "agent-status.json").unlink(missing_ok=True)
            # both containers of the DaemonSet pod come back, as after a reinstall: after an
            # uninstall the eBPF maps are new and empty, and only a new ztunnel's listeners
            # register themselves in them
            meshctl("local", "restart", "ztunnel", "--node", NODE)
            meshctl("local", "start", "agent", "--node", NODE)
            restored()


@dataclass
class ExtraPod:
    netns: str
    veth: str
    cgroup: Path
    ip: str


def make_pod(suffix: str, ip: str) -> ExtraPod:
    """A sandbox on node-1's pod network, as a primary CNI would have made it."""
    netns, veth = f"nm-pod-kcni-{suffix}", f"nmkcni{suffix}"
    if len(veth) > 15:
        raise ValueError(f"interface name {veth!r} is longer than 15 characters")
    cgroup = subtree(cgroup2_mount()) / NODE / f"kcni-{suffix}"
    pod = ExtraPod(netns, veth, cgroup, ip)
    try:
        for args in (["netns", "add", netns],
                     ["-n", netns, "link", "set", "lo", "up"],
                     ["link", "add", veth, "netns", NODE_NETNS, "type", "veth",
                      "peer", "name", "eth0", "netns", netns],
                     ["-n", NODE_NETNS, "link", "set", veth, "master", POD_BRIDGE],
                     ["-n", NODE_NETNS, "link", "set", veth, "up"],
                     ["-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0"],
                     ["-n", netns, "link", "set", "eth0", "up"],
                     ["-n", netns, "route", "add", "default", "via", GATEWAY]):
            subprocess.run(["ip", *args], check=True, capture_output=True)
        cgroup.mkdir(parents=True, exist_ok=True)
    except BaseException:
        remove_pod(pod)
        raise
    return pod


def remove_pod(pod: ExtraPod) -> None:
    subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
    subprocess.run(["ip", "-n", NODE_NETNS, "link", "del", pod.veth], capture_output=True)
    try:
        pod.cgroup.rmdir()
    except OSError:
        pass


def in_pod(pod: ExtraPod, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the sandbox's netns and cgroup (as a container of the pod would)."""
    cmd = [sys.executable, "-m", "meshctl.local.podexec", "--netns", f"/run/netns/{pod.netns}",
           "--cgroup", str(pod.cgroup), "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def pod_object(name: str, ns: str, sa: str, uid: str) -> dict[str, Any]:
    """As the API server holds a pod at sandbox creation: scheduled, no IP yet."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": NODE, "serviceAccountName": sa,
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Pending"},
    }
