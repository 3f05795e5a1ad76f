"""``meshctl``: parse flags and environment into configs and call the library (STYLE 5).

Exit codes: 0 ok, 1 failure (a :class:`~meshctl.errors.MeshctlError`, message on stderr),
2 usage. ``meshctl demo`` runs :func:`meshctl.demo.run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from meshctl.errors import MeshctlError
from meshctl.local.components import MeshComponents
from meshctl.local.layout import STATE_DIR_ENV, Layout, default_state_dir


def _state_dir_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"local cluster state dir (env {STATE_DIR_ENV}, default {default_state_dir()})",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _state_dir_parent()
    parser = argparse.ArgumentParser(prog="meshctl", description="nodemesh command-line tool")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    local = sub.add_parser("local", help="the local cluster of network namespaces")
    lsub = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = lsub.add_parser("up", parents=[common], help="build and start the local cluster")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (>= 2, default 2)")
    up.add_argument("--pods-per-node", type=int, default=0,
                    help="extra enrolled sample-app pods per node (default 0)")
    up.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for the mesh to become ready (default 60)")
    up.add_argument("--workload-cert-ttl", type=int, default=None, metavar="SECONDS",
                    help="lifetime of workload certificates (default: the controller's, 24 h)")
    up.add_argument("--redirect-mode", choices=["auto", "ebpf", "iptables"], default="auto",
                    help="the node agents' redirection (default auto: eBPF when the machine "
                         "allows it, else iptables)")
    up.add_argument("--ebpf-sockmap", action="store_true",
                    help="eBPF mode: the node agents accelerate the in-pod hop between an app "
                         "and its ztunnel with sockmap/sk_msg (default off)")
    up.set_defaults(func=_local_up)
    for verb, func, help_text in (
        ("stop", _local_stop, "stop one mesh component (controller, ztunnel or agent)"),
        ("start", _local_start, "start a stopped mesh component again, as `up` started it"),
        ("restart", _local_restart, "stop and start one mesh component"),
    ):
        comp = lsub.add_parser(verb, parents=[common], help=help_text)
        comp.add_argument("component", choices=["controller", "ztunnel", "agent"])
        comp.add_argument("--node", default=None, help="the node (for ztunnel and agent)")
        comp.set_defaults(func=func)
    down = lsub.add_parser("down", parents=[common], help="remove everything the cluster created")
    down.set_defaults(func=_local_down)
    pods = lsub.add_parser("pods", parents=[common], help="list the pods")
    pods.add_argument("--json", action="store_true", help="JSON output")
    pods.set_defaults(func=_local_pods)
    ex = lsub.add_parser("exec", parents=[common],
                         help="run a command in a pod's network namespace and cgroup")
    ex.add_argument("pod", metavar="POD", help="<name> or <namespace>/<name>")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=_local_exec)

    for name, func, help_text in (
        ("apply", _apply, "add or replace objects in the local config dir"),
        ("delete", _delete, "remove objects from the local config dir"),
    ):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                       help="multi-document YAML file ('-' for stdin); repeatable")
        p.set_defaults(func=func)

    policy = sub.add_parser("policy", help="validate and explain authorization policy")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    pv = psub.add_parser("validate", help="check policy (and other) YAML the way the controller "
                                          "does; lists every error with file, line, field")
    pv.add_argument("files", nargs="+", metavar="FILE")
    pv.add_argument("--live", action="store_true",
                    help="also check L7 attributes against the ports of the live workloads")
    pv.add_argument("--controller", default=None, metavar="URL",
                    help="controller ops endpoint for --live (default http://10.77.0.1:15014)")
    pv.set_defaults(func=_policy_validate)
    pe = psub.add_parser("explain", help="allow or deny, and why, against the live config")
    pe.add_argument("--from", dest="source", required=True,
                    metavar="NAMESPACE/SERVICEACCOUNT|IP")
    pe.add_argument("--to", required=True, metavar="POD[:PORT]", help="<pod> or <ns>/<pod>")
    pe.add_argument("--method", default=None)
    pe.add_argument("--path", default=None)
    pe.add_argument("--header", action="append", default=[], metavar="K=V")
    pe.add_argument("--controller", default=None, metavar="URL",
                    help="controller ops endpoint (default http://10.77.0.1:15014)")
    pe.set_defaults(func=_policy_explain)
    st = sub.add_parser("status", parents=[common],
                        help="controller config version and errors, nodes' redirection state")
    st.add_argument("--controller", default=None, metavar="URL",
                    help="controller ops endpoint (default http://10.77.0.1:15014)")
    st.add_argument("--json", action="store_true", help="the controller's /debug/status as JSON")
    st.set_defaults(func=_status)

    demo = sub.add_parser("demo", parents=[common], help="run the nodemesh demo")
    demo.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    demo.set_defaults(func=_demo)
    return parser


def _state(args: argparse.Namespace) -> Path:
    return args.state_dir if args.state_dir is not None else default_state_dir()


def _local_up(args: argparse.Namespace) -> int:
    import time

    from meshctl.local import cluster

    started = time.monotonic()
    state = _state(args)
    if args.workload_cert_ttl is not None and args.workload_cert_ttl < 10:
        raise _Usage("--workload-cert-ttl must be at least 10 seconds")
    topo = cluster.up(cluster.UpConfig(
        state, args.nodes, args.pods_per_node, args.timeout,
        MeshComponents(workload_cert_ttl=args.workload_cert_ttl,
                       redirect_mode=args.redirect_mode, ebpf_sockmap=args.ebpf_sockmap)))
    print(f"local cluster up in {time.monotonic() - started:.1f}s: {len(topo.nodes)} nodes, "
          f"{len(topo.pods)} pods (state in {state}); `meshctl local pods` lists them")
    return 0


def _local_stop(args: argparse.Namespace) -> int:
    from meshctl.local import cluster

    was = cluster.stop_component(_state(args), args.component, args.node)
    print(f"{args.component} {'stopped' if was else 'was not running'}")
    return 0


def _local_start(args: argparse.Namespace) -> int:
    from meshctl.local import cluster

    cluster.start_component(_state(args), args.component, args.node)
    print(f"{args.component} started")
    return 0


def _local_restart(args: argparse.Namespace) -> int:
    from meshctl.local import cluster

    cluster.stop_component(_state(args), args.component, args.node)
    cluster.start_component(_state(args), args.component, args.node)
    print(f"{args.component} restarted")
    return 0


def _local_down(args: argparse.Namespace) -> int:
    from meshctl.local import cluster

    report = cluster.down(_state(args))
    print(f"local cluster down: {report.killed} processes, {report.netns} namespaces, "
          f"{report.links} interfaces, {report.cgroups} cgroups removed")
    return 0


def _local_pods(args: argparse.Namespace) -> int:
    from meshctl.local import inventory

    layout = Layout(_state(args))
    rows = inventory.collect(layout)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print(inventory.table(rows, inventory.node_modes(layout)))
    return 0


def _local_exec(args: argparse.Namespace) -> int:
    from meshctl.local import cluster

    cmd: list[str] = list(args.cmd)
    # options between POD and "--" (argparse hands them to the remainder): only --state-dir
    while cmd[:1] == ["--state-dir"] and len(cmd) >= 2:
        args.state_dir, cmd = Path(cmd[1]), cmd[2:]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise _Usage("meshctl local exec: missing command (usage: meshctl local exec POD -- CMD)")
    return cluster.exec_in_pod(_state(args), args.pod, cmd)


def _apply(args: argparse.Namespace) -> int:
    from meshctl import manifests

    for m in manifests.apply(args.filename, Layout(_state(args)).config_dir):
        print(f"{m} configured")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from meshctl import manifests

    deleted, missing = manifests.delete(args.filename, Layout(_state(args)).config_dir)
    for m in deleted:
        print(f"{m} deleted")
    for m in missing:
        print(f"{m} not found", file=sys.stderr)
    return 0


def _policy_validate(args: argparse.Namespace) -> int:
    from meshctl import policy

    live = (policy.fetch_config(args.controller or policy.DEFAULT_CONTROLLER)
            if args.live else None)
    problems = policy.validate(args.files, live)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} error(s)", file=sys.stderr)
        return 1
    print(f"{len(args.files)} file(s) valid")
    return 0


def _policy_explain(args: argparse.Namespace) -> int:
    from meshctl import policy

    snapshot = policy.fetch_config(args.controller or policy.DEFAULT_CONTROLLER)
    result = policy.explain(snapshot, source=args.source, to=args.to, method=args.method,
                            path=args.path, headers=args.header)
    print(policy.render(result))
    return 0


def _status(args: argparse.Namespace) -> int:
    from meshctl import policy, status

    url = (args.controller or policy.DEFAULT_CONTROLLER).rstrip("/") + "/debug/status"
    controller = policy.fetch_json(url)
    if args.json:
        print(json.dumps(controller, indent=2))
        return 0
    print(status.render(controller, status.read_agent_statuses(Layout(_state(args)).nodes_dir)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from meshctl import demo

    return demo.run(state_dir=_state(args), keep=args.keep)


class _Usage(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        print(exc, file=sys.stderr)
        return 2
    except MeshctlError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
