"""Building, using and removing the local cluster (``meshctl local up|down|exec``).

``up`` records the topology in ``cluster.json`` before it changes anything, then builds the
network (:mod:`network` plan, :mod:`netlink` edge), the cgroups, starts the pods' apps, writes
tokens and config objects, starts the controller and the node components through the
:class:`~meshctl.local.components.Components` seam, and waits (each wait with a deadline whose
error names the log to read). A failed ``up`` leaves everything in place for debugging; ``down``
removes it.

``down`` never trusts ``cluster.json`` alone: it kills by pid file, by cgroup membership and by
network namespace, deletes every ``nm-*`` netns and host interface and the ``nodemesh`` cgroup
subtree, and removes the state dir's runtime files (logs are kept). It is idempotent.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from meshctl import configdir
from meshctl.errors import ClusterError, MeshctlError, PodNotFoundError
from meshctl.local import agentstatus, cgroups, network, objects, pidfile, processes, topology
from meshctl.local.components import Components, MeshComponents
from meshctl.local.layout import Layout
from meshctl.local.netlink import IpRoute2, Netlink
from meshctl.local.processes import Launch
from meshctl.local.topology import HOST_BRIDGE, NETNS_PREFIX, Topology


@dataclass(frozen=True)
class UpConfig:
    state_dir: Path
    nodes: int = 2
    pods_per_node: int = 0
    timeout: float = 60.0
    components: Components = field(default_factory=MeshComponents)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the local cluster needs root (network namespaces, cgroups); use sudo")


def _leftovers(nl: Netlink, cg_mount: str) -> list[str]:
    found = [f"netns {n}" for n in nl.list_netns() if n.startswith(NETNS_PREFIX)]
    found += [f"interface {n}" for n in nl.list_links() if n.startswith(NETNS_PREFIX)]
    if cgroups.subtree(cg_mount).exists():
        found.append(f"cgroup {cgroups.subtree(cg_mount)}")
    return found


def up(config: UpConfig, netlink: Netlink | None = None) -> Topology:
    _require_root()
    nl = netlink or IpRoute2()
    cg_mount = cgroups.cgroup2_mount()
    left = _leftovers(nl, cg_mount)
    if left:
        raise ClusterError(
            f"a local cluster (or its leftovers) already exists: {', '.join(left[:5])}"
            f"{' …' if len(left) > 5 else ''}; run `meshctl local down` first"
        )
    topo = topology.build(config.nodes, config.pods_per_node)
    try:
        _build(config, topo, nl, cg_mount)
    except MeshctlError as exc:
        raise ClusterError(
            f"{exc} (the partial cluster is left for debugging; `meshctl local down` removes it)"
        ) from exc
    return topo


def _build(config: UpConfig, topo: Topology, nl: Netlink, cg_mount: str) -> None:
    layout = Layout(config.state_dir)
    deadline = time.monotonic() + config.timeout

    layout.root.mkdir(parents=True, exist_ok=True)
    _write_text(layout.cluster_json, _cluster_json(topo, cg_mount), 0o644)

    for op in network.plan(topo):
        nl.apply(op)
    for pod in topo.pods:
        cgroups.create(Path(pod.cgroup(cg_mount)))

    comps = config.components
    processes.start(
        Launch(
            name=f"pod {pod.key}",
            argv=tuple(comps.pod(pod)),
            log=layout.pod_log(pod),
            pid_file=layout.pod_pid(pod),
            cgroup=Path(pod.cgroup(cg_mount)),
            netns=pod.netns_path,
        )
        for pod in topo.pods
    )

    _write_tokens(topo, layout)
    configdir.write(
        layout.config_dir,
        ((objects.object_filename(o), o) for o in objects.topology_objects(topo)),
    )

    controller = component_launch(layout, cg_mount, "controller", comps.controller(layout))
    cgroups.create(controller.cgroup)
    processes.start([controller])
    _wait(
        lambda: layout.controller_root_cert.is_file()
        and layout.controller_root_cert.stat().st_size > 0,
        deadline,
        f"the controller did not write its root certificate {layout.controller_root_cert}",
        controller.log,
        controller.pid_file,
    )
    for node in topo.nodes:
        shutil.copyfile(layout.controller_root_cert, layout.root_cert(node))

    node_launches: list[Launch] = []
    for node in topo.nodes:
        for kind, argv in (("ztunnel", comps.ztunnel(layout, node)),
                           ("agent", comps.agent(layout, node))):
            launch = component_launch(layout, cg_mount, kind, argv, node)
            cgroups.create(launch.cgroup)
            node_launches.append(launch)
    processes.start(node_launches)

    if comps.wait_for_mesh:
        _wait_for_mesh(topo, layout, deadline)


def _cluster_json(topo: Topology, cg_mount: str) -> str:
    return json.dumps(topology.to_record(topo, cg_mount), indent=2) + "\n"


def _write_text(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_tokens(topo: Topology, layout: Layout) -> None:
    layout.node_tokens_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.node_tokens_dir, 0o700)
    for node in topo.nodes:
        token = secrets.token_urlsafe(32)
        _write_text(layout.node_tokens_dir / node.name, token + "\n", 0o600)
        _write_text(layout.token_file(node), token + "\n", 0o600)


def _wait(
    ready: Callable[[], bool], deadline: float, what: str, log: Path, pid_file: Path | None = None
) -> None:
    while True:
        if ready():
            return
        if pid_file is not None and pidfile.live_pid(pid_file) is None:
            raise ClusterError(f"{what}: the process exited; read {log}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} before the deadline; read {log}")
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - fixed http URL
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_for_mesh(topo: Topology, layout: Layout, deadline: float) -> None:
    _wait(
        functools.partial(_http_ok, f"http://{topology.CONTROLLER_METRICS}/readyz"),
        deadline,
        f"the controller is not ready (http://{topology.CONTROLLER_METRICS}/readyz)",
        layout.controller_dir / "controller.log",
        layout.controller_dir / "controller.pid",
    )
    for node in topo.nodes:
        _wait(
            functools.partial(_http_ok, f"http://{node.readiness}/healthz/ready"),
            deadline,
            f"the ztunnel on {node.name} is not ready (http://{node.readiness}/healthz/ready)",
            layout.node_dir(node) / "ztunnel.log",
            layout.node_dir(node) / "ztunnel.pid",
        )
    for node in topo.nodes:
        uids = {str(p.uid) for p in topo.pods_on(node) if topo.enrolled(p)}

        def redirected(node: topology.Node = node, uids: set[str] = uids) -> bool:
            try:
                status = agentstatus.parse(layout.agent_status(node).read_text())
            except OSError:
                return False
            return all(u in status and status[u].ready for u in uids)

        _wait(
            redirected,
            deadline,
            f"the agent on {node.name} did not report every enrolled pod redirected "
            f"({layout.agent_status(node)})",
            layout.node_dir(node) / "agent.log",
            layout.node_dir(node) / "agent.pid",
        )


# --- components -----------------------------------------------------------------------------

COMPONENT_KINDS: Final = ("controller", "ztunnel", "agent")


def component_launch(
    layout: Layout, cg_mount: str, kind: str, argv: list[str], node: topology.Node | None = None
) -> Launch:
    """How ``up`` starts one mesh component; ``restart_component`` starts it again the same way
    (the argv is recorded beside the pid file, so a restart reproduces ``up``'s flags)."""
    if kind == "controller":
        return Launch("controller", tuple(argv), layout.controller_dir / "controller.log",
                      layout.controller_dir / "controller.pid",
                      cgroups.component_cgroup(cg_mount, "controller"))
    assert node is not None
    node_dir = layout.node_dir(node)
    return Launch(f"{kind} on {node.name}", tuple(argv), node_dir / f"{kind}.log",
                  node_dir / f"{kind}.pid",
                  cgroups.component_cgroup(cg_mount, f"{node.name}-{kind}"),
                  f"/run/netns/{node.netns}")


def _component(state_dir: Path, kind: str, node_name: str | None) -> tuple[Launch, Layout]:
    if kind not in COMPONENT_KINDS:
        raise ClusterError(f"unknown component {kind!r}; one of {', '.join(COMPONENT_KINDS)}")
    topo, mount = load(state_dir)
    layout = Layout(state_dir)
    node = None
    if kind != "controller":
        matches = [n for n in topo.nodes if n.name == node_name]
        if not matches:
            known = ", ".join(n.name for n in topo.nodes)
            raise ClusterError(f"{kind} needs --node, one of: {known} (got {node_name!r})")
        node = matches[0]
    launch = component_launch(layout, mount, kind, [], node)
    recorded = processes.recorded_argv(launch.pid_file)
    if recorded is None:
        raise ClusterError(f"no recorded command for {launch.name} beside {launch.pid_file}; "
                           "was the cluster started by `meshctl local up`?")
    return Launch(launch.name, recorded, launch.log, launch.pid_file, launch.cgroup,
                  launch.netns), layout


def stop_component(state_dir: Path, kind: str, node_name: str | None = None) -> bool:
    """SIGTERM (then SIGKILL) one component; True if it was running."""
    _require_root()
    launch, _ = _component(state_dir, kind, node_name)
    pids = cgroups.pids(launch.cgroup)
    live = pidfile.live_pid(launch.pid_file)
    if live is not None:
        pids.add(live)
    left = processes.terminate(pids)
    if left:
        raise ClusterError(f"{launch.name} did not exit (pids {sorted(left)})")
    return bool(pids)


def start_component(state_dir: Path, kind: str, node_name: str | None = None,
                    timeout: float = 30.0) -> None:
    """Start one component again with the flags ``up`` gave it and wait until it is ready."""
    _require_root()
    launch, layout = _component(state_dir, kind, node_name)
    if pidfile.live_pid(launch.pid_file) is not None:
        raise ClusterError(f"{launch.name} is already running; use `meshctl local restart`")
    processes.start([launch])
    topo, _ = load(state_dir)
    deadline = time.monotonic() + timeout
    if kind == "controller":
        url = f"http://{topology.CONTROLLER_METRICS}/readyz"
    elif kind == "ztunnel":
        url = f"http://{next(n for n in topo.nodes if n.name == node_name).readiness}/healthz/ready"
    else:
        url = ""
    if url:
        _wait(functools.partial(_http_ok, url), deadline, f"{launch.name} is not ready ({url})",
              launch.log, launch.pid_file)
    else:
        _wait(lambda: layout.agent_status(
            next(n for n in topo.nodes if n.name == node_name)).is_file(), deadline,
            f"{launch.name} wrote no status", launch.log, launch.pid_file)


# --- down -----------------------------------------------------------------------------------


@dataclass
class DownReport:
    killed: int = 0
    netns: int = 0
    links: int = 0
    cgroups: int = 0
    problems: list[str] = field(default_factory=list)


def down(state_dir: Path, netlink: Netlink | None = None) -> DownReport:
    _require_root()
    nl = netlink or IpRoute2()
    layout = Layout(state_dir)
    report = DownReport()
    try:
        cg_root: Path | None = cgroups.subtree(cgroups.cgroup2_mount())
    except ClusterError as exc:
        cg_root = None
        report.problems.append(str(exc))

    our_netns = [n for n in nl.list_netns() if n.startswith(NETNS_PREFIX)]
    victims: set[int] = set()
    for base in layout.runtime_entries():
        if base.is_dir():
            for pid_path in base.rglob("*.pid"):
                pid = pidfile.live_pid(pid_path)
                if pid is not None:
                    victims.add(pid)
    victims |= processes.pids_in_netns(f"/run/netns/{n}" for n in our_netns)
    if cg_root is not None:
        victims |= cgroups.pids(cg_root)
    victims.discard(os.getpid())
    still = processes.terminate(victims)
    if cg_root is not None:
        cgroups.kill_all(cg_root)
        still |= cgroups.pids(cg_root)
        still = processes.terminate(still, grace=0.0) if still else still
    report.killed = len(victims)
    if still:
        report.problems.append(f"processes survived SIGKILL: {sorted(still)}")
    _remove_bpf_pins(report)

    # node netns last: deleting one takes its end of each veth with it
    for name in sorted(our_netns, key=lambda n: n.startswith(f"{NETNS_PREFIX}node-")):
        try:
            nl.delete_netns(name)
            report.netns += 1
        except MeshctlError as exc:
            report.problems.append(str(exc))
    for name in nl.list_links():
        if name.startswith(NETNS_PREFIX) or name == HOST_BRIDGE:
            try:
                nl.delete_link(name)
                report.links += 1
            except MeshctlError as exc:
                if name in nl.list_links():
                    report.problems.append(str(exc))
    if cg_root is not None:
        total = len(cgroups.walk_bottom_up(cg_root))
        left = cgroups.remove(cg_root)
        report.cgroups = total - len(left)
        if left:
            report.problems.append(f"cgroups not removed (still busy?): {left}")
    _remove_runtime_files(layout, report)
    if report.problems:
        raise ClusterError(
            "`down` could not remove everything: " + "; ".join(report.problems)
            + " — check with `ip netns list`, `ip link`, and run `meshctl local down` again"
        )
    return report


#: where the node agents pin their eBPF programs' maps and links (node_agent.redirect.ebpf)
BPF_PIN_ROOT: Final = Path("/sys/fs/bpf/nodemesh")


def _remove_bpf_pins(report: DownReport, root: Path = BPF_PIN_ROOT) -> None:
    """Unpinning is what detaches the agents' programs (they hold no fd once killed)."""
    if not root.exists():
        return
    try:
        shutil.rmtree(root)
    except OSError as exc:
        report.problems.append(f"cannot remove the eBPF pins in {root}: {exc}")


def _remove_runtime_files(layout: Layout, report: DownReport) -> None:
    """Delete everything ``up`` wrote except ``*.log`` files, then the emptied directories."""
    for entry in layout.runtime_entries():
        try:
            if entry.is_file() or entry.is_symlink() or entry.is_socket():
                entry.unlink()
                continue
            if not entry.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(entry, topdown=False):
                for fname in filenames:
                    if not fname.endswith(".log"):
                        os.unlink(os.path.join(dirpath, fname))
                for dname in dirnames:
                    sub = os.path.join(dirpath, dname)
                    if not os.listdir(sub):
                        os.rmdir(sub)
            if not os.listdir(entry):
                entry.rmdir()
        except OSError as exc:
            report.problems.append(f"cannot remove {entry}: {exc}")


# --- exec -----------------------------------------------------------------------------------


def load(state_dir: Path) -> tuple[Topology, str]:
    """The running cluster's topology and cgroup2 mount, from ``cluster.json``."""
    path = Layout(state_dir).cluster_json
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ClusterError(
            f"no local cluster in {state_dir} ({path} is missing); run `meshctl local up` "
            "or pass the right --state-dir"
        ) from exc
    topo = topology.from_json(text, str(path))
    try:
        mount = str(json.loads(text).get("cgroupRoot") or cgroups.cgroup2_mount())
    except ValueError:
        mount = cgroups.cgroup2_mount()
    return topo, mount


def find_pod(topo: Topology, ref: str) -> topology.Pod:
    namespace, sep, name = ref.rpartition("/")
    matches = [p for p in topo.pods if p.name == name and (not sep or p.namespace == namespace)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(p.key for p in topo.pods)
    if not matches:
        raise PodNotFoundError(f"no pod {ref!r} in the local cluster; pods: {known}")
    raise PodNotFoundError(f"pod name {ref!r} is ambiguous; use <namespace>/<name> ({known})")


def pod_argv(state_dir: Path, ref: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` inside the pod's netns and cgroup."""
    topo, mount = load(state_dir)
    pod = find_pod(topo, ref)
    return [sys.executable, "-m", "meshctl.local.podexec", "--netns", pod.netns_path,
            "--cgroup", pod.cgroup(mount), "--", *argv]


def node_argv(state_dir: Path, node_name: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` inside a node's netns (as its mesh processes run)."""
    topo, _ = load(state_dir)
    for node in topo.nodes:
        if node.name == node_name:
            return [sys.executable, "-m", "meshctl.local.podexec", "--netns",
                    f"/run/netns/{node.netns}", "--", *argv]
    raise ClusterError(f"no node {node_name!r}; nodes: {', '.join(n.name for n in topo.nodes)}")


def exec_in_pod(state_dir: Path, ref: str, argv: list[str]) -> int:
    """Run ``argv`` in the pod's netns and cgroup with our stdio, replacing this process."""
    _require_root()
    cmd = pod_argv(state_dir, ref, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # replace meshctl with the wrapper: signals sent to `meshctl local exec` reach the command
        os.execv(sys.executable, cmd)
    except OSError as exc:
        raise ClusterError(f"cannot run {argv[0]!r} in {ref}: {exc}") from exc
