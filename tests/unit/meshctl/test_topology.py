from __future__ import annotations

import itertools
import json

import pytest
import yaml

from meshapi.ids import PodUid
from meshctl.errors import TopologyError
from meshctl.local import network, objects, topology
from meshctl.local.netlink import argv


def _topo(nodes: int = 2, ppn: int = 0) -> topology.Topology:
    counter = itertools.count(1)
    return topology.build(nodes, ppn, lambda: PodUid(f"uid-{next(counter)}"))

def test_default_pods_nodes_and_addresses() -> None:
    topo = _topo()
    got = {p.key: (p.node.name, str(p.ip), p.service_account, p.netns, p.veth) for p in topo.pods}
    assert got == {
        "default/client": ("node-1", "10.78.1.2", "client", "nm-pod-default-client", "nm-v1"),
        "default/server-1": ("node-2", "10.78.2.2", "server", "nm-pod-default-server-1", "nm-v2"),
        "default/server-2": ("node-1", "10.78.1.3", "server", "nm-pod-default-server-2", "nm-v3"),
        "legacy/outsider": ("node-2", "10.78.2.3", "default", "nm-pod-legacy-outsider", "nm-v4"),
    }
    n1, n2 = topo.nodes
    assert (n1.name, n1.netns, n1.host_veth, str(n1.ip)) == ("node-1", "nm-node-1", "nm-h1",
                                                             "10.77.0.11")
    assert (str(n2.ip), str(n2.pod_cidr), str(n2.pod_gateway)) == ("10.77.0.12", "10.78.2.0/24",
                                                                   "10.78.2.1")
    assert n1.readiness == "10.77.0.11:15021" and n1.metrics == "10.77.0.11:15020"
    assert [topo.enrolled(p) for p in topo.pods] == [True, True, True, False]

def test_pods_per_node_and_unique_addresses() -> None:
    topo = _topo(nodes=3, ppn=2)
    names = [p.name for p in topo.pods]
    assert names[4:] == ["app-node-1-1", "app-node-1-2", "app-node-2-1", "app-node-2-2",
                         "app-node-3-1", "app-node-3-2"]
    assert len({p.ip for p in topo.pods}) == len(topo.pods)
    assert len({p.veth for p in topo.pods}) == len(topo.pods)
    for p in topo.pods:
        assert p.ip in p.node.pod_cidr and p.ip != p.node.pod_gateway
    app = topo.pods[-1]
    assert (app.service_account, dict(app.labels), app.app_port) == ("app", {"app": "app"}, 8080)
    assert topo.enrolled(app)

def test_interface_names_fit_ifnamsiz_at_the_limits() -> None:
    topo = topology.build(topology.MAX_NODES, 3)
    for name in topo.interface_names():
        assert len(name) <= 15, name
    for op in network.plan(topo):
        for attr in ("name", "dev", "peer", "master"):
            value = getattr(op, attr, None)
            if value is not None and not isinstance(op, network.AddNetns):
                assert len(value) <= 15, op

@pytest.mark.parametrize(("nodes", "ppn"), [(1, 0), (0, 0), (topology.MAX_NODES + 1, 0), (2, -1)])
def test_bad_sizes_are_rejected(nodes: int, ppn: int) -> None:
    with pytest.raises(TopologyError, match="between"):
        topology.build(nodes, ppn)

def test_uids_are_uuid4_by_default() -> None:
    import uuid

    uids = {p.uid for p in topology.build().pods}
    assert len(uids) == 4
    assert all(uuid.UUID(u).version == 4 for u in uids)

@pytest.mark.parametrize(
    ("pod", "ns", "want"),
    [
        ({}, {"nodemesh.io/dataplane-mode": "enabled"}, True),
        ({"nodemesh.io/dataplane-mode": "none"}, {"nodemesh.io/dataplane-mode": "enabled"}, False),
        ({"nodemesh.io/dataplane-mode": "enabled"}, {}, True),
        ({}, {}, False),
        ({}, {"nodemesh.io/dataplane-mode": "disabled"}, False),
    ],
)
def test_enrollment_rule(pod: dict[str, str], ns: dict[str, str], want: bool) -> None:
    assert topology.is_enrolled(pod, ns) is want

def test_cluster_json_round_trip() -> None:
    topo = _topo(3, 1)
    record = topology.to_record(topo, "/sys/fs/cgroup/unified")
    back = topology.from_json(json.dumps(record), "cluster.json")
    assert back == topo
    pod = back.pods[0]
    assert pod.cgroup("/cg") == "/cg/nodemesh/node-1/uid-1"

def test_cluster_json_errors_name_the_file() -> None:
    with pytest.raises(TopologyError, match=r"/x/cluster.json .*meshctl local down"):
        topology.from_json('{"nodes": 2}', "/x/cluster.json")

def test_kubernetes_objects() -> None:
    topo = _topo()
    objs = objects.topology_objects(topo)
    files = [objects.object_filename(o) for o in objs]
    assert files == [
        "namespace.default.yaml",
        "namespace.legacy.yaml",
        "serviceaccount.default.client.yaml",
        "serviceaccount.default.server.yaml",
        "serviceaccount.legacy.default.yaml",
        "pod.default.client.yaml",
        "pod.default.server-1.yaml",
        "pod.default.server-2.yaml",
        "pod.legacy.outsider.yaml",
        "service.default.server.yaml",
    ]
    by_file = dict(zip(files, objs, strict=True))
    assert by_file["namespace.default.yaml"]["metadata"]["labels"] == {
        "nodemesh.io/dataplane-mode": "enabled"
    }
    assert by_file["namespace.legacy.yaml"]["metadata"]["labels"] == {}
    server1 = yaml.safe_load(yaml.safe_dump(by_file["pod.default.server-1.yaml"]))
    assert server1 == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "server-1",
            "namespace": "default",
            "uid": "uid-2",
            "labels": {"app": "server"},
            "annotations": {"local.nodemesh.io/netns": "/run/netns/nm-pod-default-server-1"},
        },
        "spec": {
            "nodeName": "node-2",
            "serviceAccountName": "server",
            "containers": [{"name": "app", "image": "meshctl-sampleapp",
                            "ports": [{"containerPort": 8080, "name": "http",
                                       "protocol": "TCP"}]}],
        },
        "status": {"podIP": "10.78.2.2", "phase": "Running"},
    }
    svc = by_file["service.default.server.yaml"]
    assert svc["spec"] == {
        "clusterIP": "10.96.0.10",
        "selector": {"app": "server"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    }

def test_network_plan_golden_for_one_pod_and_node() -> None:
    topo = _topo()
    lines = [" ".join(argv(op)) for op in network.plan(topo)]
    assert lines[:3] == [
        "link add nm-br0 type bridge",
        "addr add 10.77.0.1/24 dev nm-br0",
        "link set nm-br0 up",
    ]
    node1 = lines[3:16]
    assert node1 == [
        "netns add nm-node-1",
        "-n nm-node-1 link set lo up",
        "link add nm-h1 type veth peer name eth0 netns nm-node-1",
        "link set nm-h1 master nm-br0",
        "link set nm-h1 up",
        "-n nm-node-1 addr add 10.77.0.11/24 dev eth0",
        "-n nm-node-1 link set eth0 up",
        "-n nm-node-1 link add nm-cbr0 type bridge",
        "-n nm-node-1 addr add 10.78.1.1/24 dev nm-cbr0",
        "-n nm-node-1 link set nm-cbr0 up",
        "netns exec nm-node-1 sysctl -qw net.ipv4.ip_forward=1",
        "-n nm-node-1 route add 10.78.2.0/24 via 10.77.0.12",
        "route add 10.78.1.0/24 via 10.77.0.11",
    ]
    client = lines.index("netns add nm-pod-default-client")
    assert lines[client : client + 8] == [
        "netns add nm-pod-default-client",
        "-n nm-pod-default-client link set lo up",
        "link add nm-v1 netns nm-node-1 type veth peer name eth0 netns nm-pod-default-client",
        "-n nm-node-1 link set nm-v1 master nm-cbr0",
        "-n nm-node-1 link set nm-v1 up",
        "-n nm-pod-default-client addr add 10.78.1.2/24 dev eth0",
        "-n nm-pod-default-client link set eth0 up",
        "-n nm-pod-default-client route add default via 10.78.1.1",
    ]
    # nothing touches the host's firewall or forwarding
    assert not any("iptables" in line or ("ip_forward" in line and "netns exec" not in line)
                   for line in lines)
