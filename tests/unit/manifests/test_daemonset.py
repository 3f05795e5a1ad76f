"""daemonset/: every object valid for Kubernetes 1.30 (kubernetes-validate, strict: unknown fields
fail), `apply -f` and `apply -k` install the same files in a working order, least-privilege RBAC,
the node containers' capabilities and mounts explained, and the container arguments accepted by
the components' own parsers."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.manifests.helpers import (
    CLUSTER_SCOPED,
    DAEMONSET,
    NAMESPACE,
    Doc,
    all_docs,
    apply_f_files,
    find,
)

KUBERNETES_VERSION = "1.30.0"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def kustomization() -> dict[str, Any]:
    with (DAEMONSET / "Kustomization").open() as f:
        body = yaml.safe_load(f)
    assert isinstance(body, dict)
    return body


# ---- files and objects ------------------------------------------------------------------------


@pytest.mark.parametrize("doc", all_docs(), ids=str)
def test_object_is_valid_for_kubernetes_1_30(doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc.body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc}: {exc.message}")


def test_validation_catches_an_unknown_field() -> None:
    """The check above is strict: a misspelt field fails it."""
    ds = find("DaemonSet", "nodemesh-node")
    broken = {**ds, "spec": {**ds["spec"], "updateStrategyy": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_apply_f_reads_exactly_the_kustomization_resources() -> None:
    read = [p.name for p in apply_f_files()]
    assert read == sorted(kustomization()["resources"])
    assert not (DAEMONSET / "kustomization.yaml").exists()
    assert not (DAEMONSET / "kustomization.yml").exists()
    # subdirectories are not read by `apply -f` without -R: the image build file lives there
    assert (DAEMONSET / "image" / "Dockerfile").is_file()


def test_kustomization_says_why_it_has_no_extension() -> None:
    text = (DAEMONSET / "Kustomization").read_text()
    assert text.lstrip().startswith("#")
    assert "apply -f" in text and "not a Kubernetes object" in text


def test_apply_f_order_creates_namespace_then_crds_first() -> None:
    kinds = [d.kind for d in all_docs()]
    assert kinds[0] == "Namespace"
    last_crd = max(i for i, k in enumerate(kinds) if k == "CustomResourceDefinition")
    first_namespaced = min(i for i, k in enumerate(kinds) if k not in CLUSTER_SCOPED)
    assert last_crd < first_namespaced, kinds


def test_namespaced_objects_are_in_nodemesh_system() -> None:
    known = CLUSTER_SCOPED | {
        "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
        "PodDisruptionBudget", "DaemonSet",
    }
    for doc in all_docs():
        assert doc.kind in known, f"{doc}: say whether {doc.kind} is namespaced"
        namespace = doc.body["metadata"].get("namespace")
        if doc.kind in CLUSTER_SCOPED:
            assert namespace is None, f"{doc}: cluster-scoped, has namespace {namespace}"
        else:
            assert namespace == NAMESPACE, f"{doc}: namespace {namespace!r}"


def test_crds_cover_both_policy_kinds() -> None:
    crds = {d.body["spec"]["names"]["kind"]: d.body for d in all_docs()
            if d.kind == "CustomResourceDefinition"}
    assert set(crds) == {"AuthorizationPolicy", "PeerAuthentication"}
    for crd in crds.values():
        assert crd["spec"]["group"] == "security.nodemesh.io"
        assert crd["spec"]["scope"] == "Namespaced"
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]


# ---- RBAC ---------------------------------------------------------------------------------------


Grant = tuple[str, str, str, str, str]  # (namespace or *, apiGroup, resource, verb, name or *)


def grants(service_account: str) -> set[Grant]:
    """Everything the service account may do, from the bindings in daemonset/."""
    docs = [d.body for d in all_docs()]
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out: set[Grant] = set()
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account
                   and s["namespace"] == NAMESPACE for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        role_ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        scope = b["metadata"]["namespace"] if b["kind"] == "RoleBinding" else "*"
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames", ["*"]):
                            out.add((scope, group, resource, verb, name))
    return out


def test_rbac_has_no_wildcards() -> None:
    for doc in all_docs():
        for rule in doc.body.get("rules", []) if doc.kind in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{doc}: wildcard in {field}"
            assert "nonResourceURLs" not in rule, f"{doc}: nonResourceURLs"


def test_controller_rbac() -> None:
    g = grants("nodemesh-controller")
    assert g, "no bindings for the controller"
    assert not [x for x in g if x[2] == "pods" and x[3] in WRITE_VERBS], "controller writes pods"
    cluster_wide_writes = {x for x in g if x[0] == "*" and x[3] in WRITE_VERBS}
    assert cluster_wide_writes == {("*", "authentication.k8s.io", "tokenreviews", "create", "*")}
    for group, resource in (("", "pods"), ("", "namespaces"), ("", "services"),
                            ("", "serviceaccounts"), ("discovery.k8s.io", "endpointslices"),
                            ("security.nodemesh.io", "authorizationpolicies"),
                            ("security.nodemesh.io", "peerauthentications")):
        for verb in ("list", "watch"):
            assert ("*", group, resource, verb, "*") in g, (group, resource, verb)
    local = {x for x in g if x[0] == NAMESPACE}
    assert local == {
        (NAMESPACE, "coordination.k8s.io", "leases", "create", "*"),
        (NAMESPACE, "coordination.k8s.io", "leases", "get", "nodemesh-controller"),
        (NAMESPACE, "coordination.k8s.io", "leases", "update", "nodemesh-controller"),
        (NAMESPACE, "", "secrets", "create", "*"),
        (NAMESPACE, "", "secrets", "get", "nodemesh-ca"),
        (NAMESPACE, "", "secrets", "update", "nodemesh-ca"),
        (NAMESPACE, "", "configmaps", "create", "*"),
        (NAMESPACE, "", "configmaps", "get", "nodemesh-ca-root"),
        (NAMESPACE, "", "configmaps", "update", "nodemesh-ca-root"),
    }
    assert not [x for x in g if x[2] == "secrets" and x[0] == "*"], "cluster-wide secrets"


def test_node_rbac() -> None:
    g = grants("nodemesh-node")
    assert not [x for x in g if x[2] == "secrets"], "the node can read secrets"
    writes = {x for x in g if x[3] in WRITE_VERBS}
    assert writes == {("*", "", "pods", "patch", "*")}
    assert g == writes | {
        ("*", "", "pods", "get", "*"), ("*", "", "pods", "list", "*"),
        ("*", "", "pods", "watch", "*"),
        ("*", "", "namespaces", "get", "*"), ("*", "", "namespaces", "list", "*"),
        ("*", "", "namespaces", "watch", "*"),
        (NAMESPACE, "apps", "daemonsets", "get", "nodemesh-node"),
    }


def test_grants_sees_a_binding() -> None:
    """The RBAC checks are not vacuous: an extra rule shows up in grants()."""
    assert ("*", "", "pods", "patch", "*") in grants("nodemesh-node")
    assert grants("nobody") == set()


# ---- workloads -------------------------------------------------------------------------------


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec = find(kind, name)["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for kind, name in (("Deployment", "nodemesh-controller"), ("DaemonSet", "nodemesh-node")):
        spec = pod_spec(kind, name)
        for c in spec["containers"]:
            yield f"{name}/{c['name']}", c, spec


@pytest.mark.parametrize("where,container,spec", list(containers()), ids=lambda x: x
                         if isinstance(x, str) else "")
def test_container_basics(where: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"].get(kind, {})), (where, kind)
    assert "readinessProbe" in container and "livenessProbe" in container, where
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"], where
    assert sc.get("privileged") is not True, f"{where}: privileged (explain it or drop it)"
    assert sc.get("readOnlyRootFilesystem") is True, where
    assert container["image"] == image_ref(), where
    assert container["imagePullPolicy"] == "IfNotPresent"
    for m in container.get("volumeMounts", []):
        if m.get("mountPropagation") == "Bidirectional":
            assert sc.get("privileged") is True, f"{where}: Bidirectional needs privileged"


def image_ref() -> str:
    (image,) = kustomization()["images"]
    return f"{image['newName']}:{image['newTag']}"


def test_every_added_capability_is_explained_in_a_comment() -> None:
    """In 30-node.yaml each `- CAP` under `add:` is preceded by a `# CAP: why` comment, and a
    `privileged: true` anywhere would need a comment just above it."""
    lines = (DAEMONSET / "30-node.yaml").read_text().splitlines()
    added: list[str] = []
    for c in pod_spec("DaemonSet", "nodemesh-node")["containers"]:
        added += c["securityContext"]["capabilities"].get("add", [])
    assert added
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\s*- ([A-Z_]+)\s*", line)
        if m and m.group(1) in added:
            block: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                block.insert(0, lines[j].strip())
                j -= 1
            assert block and block[0].startswith(f"# {m.group(1)}:"), f"line {i + 1}: {line}"
        if re.fullmatch(r"\s*privileged: true\s*", line):
            assert lines[i - 1].strip().startswith("#"), f"line {i + 1}: unexplained privileged"


def test_node_container_capabilities() -> None:
    spec = pod_spec("DaemonSet", "nodemesh-node")
    caps = {c["name"]: set(c["securityContext"]["capabilities"]["add"]) for c in
            spec["containers"]}
    assert caps == {
        "node-agent": {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE",
                       "SYS_PTRACE"},
        "ztunnel": {"NET_ADMIN", "SYS_ADMIN"},
    }


def test_node_pod_settings() -> None:
    ds = find("DaemonSet", "nodemesh-node")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "nodemesh-node"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1}}
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                           "prometheus.io/path": "/metrics"}


def mounts(spec: dict[str, Any], container: str) -> dict[str, tuple[dict[str, Any],
                                                                    dict[str, Any]]]:
    """mountPath -> (volumeMount, volume) for one container."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in c["volumeMounts"]}


def test_node_agent_host_mounts() -> None:
    m = mounts(pod_spec("DaemonSet", "nodemesh-node"), "node-agent")
    expected = {  # mountPath: (host path, read-only, propagation)
        "/var/run/nodemesh": ("/var/run/nodemesh", False, None),
        "/host/opt/cni/bin": ("/opt/cni/bin", False, None),
        "/host/etc/cni/net.d": ("/etc/cni/net.d", False, None),
        "/var/run/netns": ("/var/run/netns", True, "HostToContainer"),
        "/host/proc": ("/proc", True, None),
        "/sys/fs/bpf": ("/sys/fs/bpf", False, "HostToContainer"),
        "/host/sys/fs/cgroup": ("/sys/fs/cgroup", True, None),
        "/lib/modules": ("/lib/modules", True, None),
        "/usr/src": ("/usr/src", True, None),
    }
    host = {path: (v["hostPath"]["path"], bool(mnt.get("readOnly")), mnt.get("mountPropagation"))
            for path, (mnt, v) in m.items() if "hostPath" in v}
    assert host == expected


def test_ztunnel_mounts() -> None:
    m = mounts(pod_spec("DaemonSet", "nodemesh-node"), "ztunnel")
    assert set(m) == {"/var/run/nodemesh", "/var/run/nodemesh/ca", "/var/run/secrets/nodemesh"}
    ca = m["/var/run/nodemesh/ca"][1]["configMap"]
    assert ca["name"] == "nodemesh-ca-root"
    assert ca["items"] == [{"key": "root-cert.pem", "path": "root-cert.pem"}]
    (token,) = m["/var/run/secrets/nodemesh"][1]["projected"]["sources"]
    assert token["serviceAccountToken"] == {"audience": "nodemesh", "expirationSeconds": 3600,
                                            "path": "token"}


# ---- arguments --------------------------------------------------------------------------------


def argv_and_env(kind: str, name: str, container: str) -> tuple[list[str], dict[str, str]]:
    """The container's args with $(VAR) expanded as the kubelet does, and its environment with
    downward-API values filled in."""
    (c,) = [c for c in pod_spec(kind, name)["containers"] if c["name"] == container]
    downward = {"spec.nodeName": "node-1", "metadata.name": f"{name}-x7k2p",
                "metadata.namespace": NAMESPACE}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
    args = []
    for a in c["args"]:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            assert var in env, f"{container}: $({var}) is not in the container's env"
        args.append(re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], a))
    return args, env


def flags(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in args:
        assert a.startswith("--") and "=" in a, f"write flags as --name=value: {a}"
        k, _, v = a.partition("=")
        out.setdefault(k, []).append(v)
    return out


def test_ztunnel_args_parse_with_its_parser() -> None:
    from ztunnel.cli import parse_config

    args, _ = argv_and_env("DaemonSet", "nodemesh-node", "ztunnel")
    config = parse_config(args)
    assert config.node == "node-1"
    assert config.controller == "nodemesh-controller.nodemesh-system.svc:15012"
    assert config.ca_root == Path("/var/run/nodemesh/ca/root-cert.pem")
    assert config.token_file == Path("/var/run/secrets/nodemesh/token")
    assert config.zds_socket == Path("/var/run/nodemesh/zds.sock")
    assert config.admin == ("127.0.0.1", 15000)
    assert config.metrics == ("0.0.0.0", 15020)
    assert config.readiness == ("0.0.0.0", 15021)
    assert config.agent_metrics_socket == Path("/var/run/nodemesh/agent-metrics.sock")


def test_agent_args_parse_with_its_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from node_agent import cli

    args, env = argv_and_env("DaemonSet", "nodemesh-node", "node-agent")
    assert flags(args) == {
        "--source": ["kubernetes"], "--node": ["node-1"],
        "--zds-socket": ["/var/run/nodemesh/zds.sock"],
        "--cni-socket": ["/var/run/nodemesh/cni.sock"],
        "--cni-bin-dir": ["/host/opt/cni/bin"], "--cni-conf-dir": ["/host/etc/cni/net.d"],
        "--cni-plugin": ["/usr/local/lib/nodemesh/nodemesh-cni"],
        "--proc-root": ["/host/proc"], "--redirect-mode": ["auto"], "--host-probe-ip": ["auto"],
        "--cgroup": ["/host/sys/fs/cgroup"], "--bpf-pin-root": ["/sys/fs/bpf/nodemesh"],
        "--status-file": ["/var/run/nodemesh/agent-status.json"],
        "--metrics-socket": ["/var/run/nodemesh/agent-metrics.sock"],
    }
    # the plugin binary exists only in the image: the parser checks it is executable
    real_access = os.access
    plugin = flags(args)["--cni-plugin"][0]
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) == plugin or real_access(p, mode))
    config = cli.parse(args, env)
    assert config.source == "kubernetes" and config.node == "node-1"
    assert config.kube is not None
    assert config.kube.pod_name == "nodemesh-node-x7k2p"
    assert config.kube.pod_namespace == NAMESPACE
    assert config.kube.proc_root == Path("/host/proc")


def test_controller_args_parse_with_its_parser() -> None:
    from controller.cli import parse_config

    args, env = argv_and_env("Deployment", "nodemesh-controller", "controller")
    assert set(flags(args)) == {
        "--source", "--state-dir", "--listen", "--metrics-listen", "--api-san", "--ca-secret",
        "--ca-root-configmap", "--leader-lease", "--token-audience", "--node-service-account",
    }
    config = parse_config(args, env)
    assert config.source == "kubernetes"
    assert config.namespace == NAMESPACE
    assert config.pod_name == "nodemesh-controller-x7k2p"
    assert config.api_sans == ("nodemesh-controller.nodemesh-system.svc",
                               "nodemesh-controller.nodemesh-system.svc.cluster.local",
                               "nodemesh-controller")
    assert (config.ca_secret, config.ca_root_configmap, config.leader_lease) == (
        "nodemesh-ca", "nodemesh-ca-root", "nodemesh-controller")
    assert config.token_audience == "nodemesh"
    assert config.node_service_account == "nodemesh-system:nodemesh-node"


def test_controller_parser_rejects_what_the_test_feeds_it() -> None:
    """parse_config really parses: an unknown flag fails."""
    from controller.cli import parse_config

    args, env = argv_and_env("Deployment", "nodemesh-controller", "controller")
    with pytest.raises(SystemExit):
        parse_config([*args, "--no-such-flag=x"], env)


@pytest.mark.parametrize("container,flag", [
    ("node-agent", "--zds-socket"), ("node-agent", "--cni-socket"),
    ("node-agent", "--status-file"), ("node-agent", "--proc-root"), ("node-agent", "--cgroup"),
    ("node-agent", "--cni-bin-dir"), ("node-agent", "--cni-conf-dir"),
    ("node-agent", "--bpf-pin-root"), ("node-agent", "--metrics-socket"),
    ("ztunnel", "--zds-socket"), ("ztunnel", "--ca-root"), ("ztunnel", "--token-file"),
    ("ztunnel", "--agent-metrics-socket"),
])
def test_path_flags_point_into_a_mount(container: str, flag: str) -> None:
    args, _ = argv_and_env("DaemonSet", "nodemesh-node", container)
    (path,) = flags(args)[flag]
    m = mounts(pod_spec("DaemonSet", "nodemesh-node"), container)
    assert any(path == p or path.startswith(p.rstrip("/") + "/") for p in m), (flag, path)


def test_both_node_containers_share_the_zds_socket_directory() -> None:
    spec = pod_spec("DaemonSet", "nodemesh-node")
    agent = mounts(spec, "node-agent")["/var/run/nodemesh"][1]
    ztunnel = mounts(spec, "ztunnel")["/var/run/nodemesh"][1]
    assert agent is ztunnel or agent == ztunnel


def test_the_ztunnel_reads_the_agent_metrics_where_the_agent_serves_them() -> None:
    """One metrics endpoint per node: the ztunnel appends what the agent serves on this
    socket, so both name the same path, in the directory they share (above)."""
    (served,) = flags(argv_and_env("DaemonSet", "nodemesh-node", "node-agent")[0])[
        "--metrics-socket"]
    (read,) = flags(argv_and_env("DaemonSet", "nodemesh-node", "ztunnel")[0])[
        "--agent-metrics-socket"]
    assert served == read and served.startswith("/var/run/nodemesh/")


# ---- controller Service and PDB -----------------------------------------------------------------


def test_controller_service_and_pdb_select_the_controller_pods() -> None:
    deploy = find("Deployment", "nodemesh-controller")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["replicas"] == 2
    svc = find("Service", "nodemesh-controller")
    pdb = find("PodDisruptionBudget", "nodemesh-controller")
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     deploy["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {(p["name"], p["port"], named[p["targetPort"]]) for p in svc["spec"]["ports"]} == {
        ("https-api", 15012, 15012), ("http-metrics", 15014, 15014)}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "add" not in c["securityContext"]["capabilities"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
