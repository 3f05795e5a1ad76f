"""Whole local clusters driven through ``meshctl``, as a user would.

One cluster per redirection mode (``iptables``, then ``ebpf``: the session fixture is
parametrised, so the whole suite runs once per mode; building one takes seconds, not
milliseconds); tests that break something (stop the controller, kill an agent) restore it before
they return. The cluster is
torn down at the end of the session whatever happened, and ``test_zz_down`` checks that teardown
leaves nothing behind. Workload certificates live only ``CERT_TTL`` seconds so renewal happens
under the tests' own traffic.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MESHCTL = [sys.executable, "-m", "meshctl"]
CERT_TTL = 40
#: the suite runs once per mode; in eBPF mode a pod carries no iptables/nftables rule
REDIRECT_MODES = ("iptables", "ebpf")
BPF_PINS = Path("/sys/fs/bpf/nodemesh")
VIP = "10.96.0.10"


@pytest.fixture(autouse=True)
def _root(require_root: None) -> None:
    return None


def poll(what: str, fn: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Call ``fn`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the condition may raise until it holds
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Cluster:
    state_dir: Path
    mode: str = "iptables"

    def meshctl(self, *args: str, check: bool = True, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "NODEMESH_STATE_DIR": str(self.state_dir)}
        proc = subprocess.run([*MESHCTL, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            pytest.fail(f"meshctl {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def exec(self, pod: str, *argv: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.meshctl("local", "exec", pod, "--", *argv, check=check, timeout=timeout)

    def pods(self) -> dict[str, dict[str, Any]]:
        out = self.meshctl("local", "pods", "--json").stdout
        return {p["name"]: p for p in json.loads(out)}

    def ip(self, pod: str) -> str:
        return str(self.pods()[pod]["ip"])

    def node_get(self, node: str, url: str, timeout: float = 5) -> str:
        proc = subprocess.run(
            ["ip", "netns", "exec", f"nm-{node}", "curl", "-sS", "--max-time", str(timeout), url],
            capture_output=True, text=True, timeout=timeout + 5,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"GET {url} in nm-{node}: {proc.stderr.strip()}")
        return proc.stdout

    def admin(self, node: str, path: str) -> Any:
        return json.loads(self.node_get(node, f"http://127.0.0.1:15000{path}"))

    def node_metrics(self, node: str, timeout: float = 5) -> str:
        """The node's Prometheus endpoint (the ztunnel's metrics, then its agent's), read from
        the host as a Prometheus server would."""
        index = int(node.rsplit("-", 1)[1])
        url = f"http://10.77.0.{10 + index}:15020/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())

    def apply(self, yaml_text: str, tmp_path: Path, name: str = "objects.yaml") -> None:
        f = tmp_path / name
        f.write_text(yaml_text)
        self.meshctl("apply", "-f", str(f))

    def curl(self, pod: str, url: str, *extra: str, timeout: float = 5,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.exec(pod, "curl", "-sS", "--max-time", str(timeout), *extra, url,
                         check=check, timeout=timeout + 30)

    def get_json(self, pod: str, url: str, timeout: float = 3) -> Any:
        """The JSON answer of ``url`` from inside ``pod``, or None if the request failed
        (for use inside :func:`poll`)."""
        proc = self.curl(pod, url, timeout=timeout, check=False)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)

    def inbound_record(self, node: str, src_ip: str, after: float) -> dict[str, Any] | None:
        """Newest inbound connection record on ``node`` from ``src_ip`` started after ``after``."""
        for rec in self.admin(node, "/connections?limit=200"):
            if rec["direction"] == "inbound" and rec["src"].split(":")[0] == src_ip:
                if _rfc3339(rec["start"]) >= after - 1:
                    return dict(rec)
        return None

    def pid(self, node: str, component: str) -> int:
        return int((self.state_dir / "nodes" / node / f"{component}.pid").read_text().split()[0])

    def redirection(self, pod: str) -> list[str]:
        """What redirects ``pod`` (empty: nothing): our iptables rules (``-A NODEMESH...``) in
        iptables mode; in eBPF mode the pod's sk_lookup link and map entry, and then no
        nodemesh iptables or nftables rule may exist in its netns at all."""
        netns = f"nm-pod-{self.pods()[pod]['namespace']}-{pod}"
        rules = nodemesh_rules(netns)
        if self.mode == "iptables":
            return rules
        assert not rules, f"iptables rules in eBPF mode: {rules}"
        assert no_nft_rules(netns)
        cookie = netns_cookie(netns)
        pins = sorted(p for p in BPF_PINS.glob(f"*/pods/{cookie}"))
        return [f"ebpf sk_lookup link {p}" for p in pins]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` (exactly those labels) in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def nodemesh_rules(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy-save", "-t", "nat"],
                         capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if "NODEMESH" in ln and ln.startswith("-A")]


def no_nft_rules(netns: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"],
                         capture_output=True, text=True).stdout
    return "redirect" not in out and "NODEMESH" not in out.upper()


def netns_cookie(netns: str) -> int:
    """The netns's cookie (SO_NETNS_COOKIE), which names its eBPF state."""
    code = ("import socket; s = socket.socket(); "
            "print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), 'little'))")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def _rfc3339(text: str) -> float:
    import datetime
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


#: held for the whole session: the local cluster's names are fixed, so two runs (or a run and
#: the meshctl root tests, or the benchmark) on one machine take turns instead of colliding
CLUSTER_LOCK = "/run/lock/nodemesh-local-cluster.lock"


@pytest.fixture(scope="session")
def cluster_lock() -> Iterator[None]:
    with open(CLUSTER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session", params=REDIRECT_MODES)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cluster_lock: None
) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root")
    mode = str(request.param)
    c = Cluster(tmp_path_factory.mktemp(f"cluster-{mode}") / "state", mode)
    c.meshctl("local", "down", timeout=120)
    try:
        # two app pods per node: one identity (sa app) twice on each node, as real nodes have
        c.meshctl("local", "up", "--pods-per-node", "2", "--workload-cert-ttl", str(CERT_TTL),
                  "--redirect-mode", mode, timeout=300)
        for name, pod in c.pods().items():
            if pod["enrolled"]:
                assert pod.get("mode") == mode, f"pod {name} is in mode {pod.get('mode')}"
        for node in ("node-1", "node-2"):  # the node's admin endpoint says the same
            served = c.admin(node, "/config_dump")["pods"]
            assert served and {p["redirection"] for p in served} == {mode}, served
        yield c
    finally:
        c.meshctl("local", "down", check=False, timeout=120)


# --- policy: applied for one test, removed after it -----------------------------------------


def authz(name: str, spec: str, ns: str = "default", annotations: str = "") -> str:
    return (f"apiVersion: security.nodemesh.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata:\n  name: {name}\n  namespace: {ns}\n{annotations}spec:\n{spec}")


def peer_authn(name: str, mode: str, ns: str = "default") -> str:
    return (f"apiVersion: security.nodemesh.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  mtls: {{mode: {mode}}}\n")


class Applied:
    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.files: list[Path] = []

    def __call__(self, text: str) -> None:
        f = self.tmp_path / f"policy-{len(self.files)}.yaml"
        f.write_text(text)
        self.cluster.meshctl("apply", "-f", str(f))
        self.files.append(f)

    def remove_all(self) -> None:
        for f in reversed(self.files):
            self.cluster.meshctl("delete", "-f", str(f), check=False)
        self.files.clear()


@pytest.fixture
def applied(cluster: Cluster, tmp_path: Path) -> Iterator[Applied]:
    a = Applied(cluster, tmp_path)
    try:
        yield a
    finally:
        a.remove_all()
        # the rest of the suite expects no policy on any node
        poll("policies removed everywhere", lambda: status()["authorizationPolicies"] == 0
             and status()["peerAuthentications"] == 0)
        server = cluster.ip("server-1")
        poll("client reaches server-1 again",
             lambda: cluster.get_json("client", f"http://{server}:8080/"))


def status() -> dict[str, Any]:
    with urllib.request.urlopen("http://10.77.0.1:15014/debug/status", timeout=5) as resp:
        return dict(json.loads(resp.read()))
