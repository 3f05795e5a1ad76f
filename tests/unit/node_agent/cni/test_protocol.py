"""The plugin↔agent protocol: framing, CNI variables, CNI_ARGS, configs and outputs, as tables."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest

from node_agent.cni import protocol
from node_agent.cni.errors import CniCode, CniRequestError
from node_agent.cni.protocol import (
    AddRequest,
    CheckRequest,
    Command,
    DelRequest,
    StatusRequest,
    parse_cni_args,
    parse_request,
)

from .helpers import PREV_RESULT, cni_env, config, frame


def test_add_request_carries_pod_and_sandbox_ips() -> None:
    env = parse_request(frame(cni_env("ADD"), config()))
    assert env.command is Command.ADD
    assert env.cni_version == "1.0.0"
    assert env.prev_result == PREV_RESULT
    assert env.request == AddRequest(
        container_id=protocol.ContainerId("3f6940ab5ab4"),
        netns="/var/run/netns/cni-1",
        ifname="eth0",
        pod_namespace="shop",
        pod_name="web-0",
        pod_uid=protocol.PodUid("1c7e-4f"),
        infra_container_id="abc123",
        network_name="cbr0",
        cni_version="1.0.0",
        pod_ips=(ipaddress.ip_address("10.244.1.7"), ipaddress.ip_address("fd00::7")),
    )


def test_check_and_del_and_status() -> None:
    check = parse_request(frame(cni_env("CHECK"), config("0.4.0"))).request
    assert isinstance(check, CheckRequest) and len(check.pod_ips) == 2
    # DEL: no netns (namespace already gone), no prevResult
    env = parse_request(frame(cni_env("DEL", CNI_NETNS=None), config(prev=None)))
    assert isinstance(env.request, DelRequest)
    assert env.request.netns == "" and env.prev_result is None
    status = parse_request(frame({"CNI_COMMAND": "STATUS"}, config("1.1.0", prev=None)))
    assert status.request == StatusRequest(network_name="cbr0", cni_version="1.1.0")


def test_pod_ips_skip_host_interfaces_and_duplicates() -> None:
    prev = {
        "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/proc/1/ns/net"}],
        "ips": [
            {"address": "10.0.0.1/24", "interface": 0},  # host side
            {"address": "10.0.0.2/24", "interface": 1},
            {"address": "10.0.0.2/24", "interface": 1},
            {"address": "10.0.0.3/32"},  # no index: counted
        ],
    }
    req = parse_request(frame(cni_env(), config(prev=prev))).request
    assert isinstance(req, AddRequest)
    assert [str(ip) for ip in req.pod_ips] == ["10.0.0.2", "10.0.0.3"]


def test_old_result_version_field_and_empty_result() -> None:
    prev = {"ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    req = parse_request(frame(cni_env(), config("0.3.1", prev=prev))).request
    assert isinstance(req, AddRequest) and [str(i) for i in req.pod_ips] == ["10.0.0.2"]
    req = parse_request(frame(cni_env(), config(prev={}))).request
    assert isinstance(req, AddRequest) and req.pod_ips == ()


def _prev(**change: Any) -> dict[str, Any]:
    prev = copy.deepcopy(PREV_RESULT)
    prev.update(change)
    return prev


BAD_REQUESTS: list[tuple[str, bytes, int, str]] = [
    ("no magic", b"HELLO\n\n{}", CniCode.AGENT_PROTOCOL, "not a nodemesh CNI request"),
    (
        "other version",
        b"NODEMESH-CNI 2\n\n{}",
        CniCode.AGENT_PROTOCOL,
        "first line 'NODEMESH-CNI 2'",
    ),
    ("no blank line", b"NODEMESH-CNI 1\nCNI_COMMAND=ADD", CniCode.AGENT_PROTOCOL, "no blank line"),
    (
        "unknown variable",
        b"NODEMESH-CNI 1\nHOME=/root\n\n{}",
        CniCode.AGENT_PROTOCOL,
        "line 2: expected one of",
    ),
    (
        "no equals",
        b"NODEMESH-CNI 1\nCNI_COMMAND\n\n{}",
        CniCode.AGENT_PROTOCOL,
        "line 2: expected one of",
    ),
    (
        "twice",
        b"NODEMESH-CNI 1\nCNI_COMMAND=ADD\nCNI_COMMAND=DEL\n\n{}",
        CniCode.AGENT_PROTOCOL,
        "line 3: CNI_COMMAND given twice",
    ),
    ("not utf-8", b"NODEMESH-CNI 1\nCNI_ARGS=\xff\n\n{}", CniCode.INVALID_ENV, "line 2: not UTF-8"),
    (
        "no command",
        frame(cni_env(CNI_COMMAND=None), config()),
        CniCode.INVALID_ENV,
        "CNI_COMMAND '' is not one",
    ),
    (
        "version cmd",
        frame(cni_env("VERSION"), config()),
        CniCode.INVALID_ENV,
        "CNI_COMMAND 'VERSION' is not one",
    ),
    ("garbage config", frame(cni_env(), b"{not json"), CniCode.DECODING_FAILURE, "not JSON"),
    ("NaN", frame(cni_env(), b'{"cniVersion": NaN}'), CniCode.DECODING_FAILURE, "NaN is not JSON"),
    (
        "duplicate key",
        frame(cni_env(), b'{"name": "a", "name": "b"}'),
        CniCode.DECODING_FAILURE,
        "key 'name' appears twice",
    ),
    ("config list", frame(cni_env(), b"[1]"), CniCode.DECODING_FAILURE, "JSON list, not an object"),
    (  # was RecursionError: the agent answered nothing and logged a handler failure
        "deep nesting",
        frame(cni_env(), b'{"cniVersion": "1.0.0", "x": ' + b"[" * 50000 + b"]" * 50000 + b"}"),
        CniCode.DECODING_FAILURE,
        "nested deeper than 64",
    ),
    (  # was accepted as inf, and the ADD result then carried Infinity: not JSON
        "number overflows to infinity",
        frame(cni_env(), json.dumps(config()).replace('"dns": {}', '"dns": {"x": 1e999}').encode()),
        CniCode.DECODING_FAILURE,
        "1e999 is out of range",
    ),
    ("empty config", frame(cni_env(), b""), CniCode.DECODING_FAILURE, "not JSON"),
    (
        "no cniVersion",
        frame(cni_env(), {"name": "n", "type": "t"}),
        CniCode.INVALID_CONFIG,
        "cniVersion is missing",
    ),
    (
        "old cniVersion",
        frame(cni_env(), config("0.2.0")),
        CniCode.INCOMPATIBLE_VERSION,
        "cniVersion '0.2.0' is not supported",
    ),
    ("no name", frame(cni_env(), config(name="")), CniCode.INVALID_CONFIG, "name is missing"),
    (
        "type not string",
        frame(cni_env(), config(type=3)),
        CniCode.INVALID_CONFIG,
        "type is missing or not a non-empty string",
    ),
    (
        "no container",
        frame(cni_env(CNI_CONTAINERID=None), config()),
        CniCode.INVALID_ENV,
        "CNI_CONTAINERID is not set (required for ADD)",
    ),
    (
        "bad container",
        frame(cni_env(CNI_CONTAINERID="-x"), config()),
        CniCode.INVALID_ENV,
        "CNI_CONTAINERID '-x' is not a container ID",
    ),
    (
        "no ifname",
        frame(cni_env(CNI_IFNAME=None), config()),
        CniCode.INVALID_ENV,
        "CNI_IFNAME is not set",
    ),
    (
        "long ifname",
        frame(cni_env(CNI_IFNAME="a" * 16), config()),
        CniCode.INVALID_ENV,
        "is not a Linux interface name",
    ),
    (
        "ifname slash",
        frame(cni_env(CNI_IFNAME="a/b"), config()),
        CniCode.INVALID_ENV,
        "is not a Linux interface name",
    ),
    (
        "ifname dot",
        frame(cni_env(CNI_IFNAME=".."), config()),
        CniCode.INVALID_ENV,
        "is not a Linux interface name",
    ),
    (
        "no netns on ADD",
        frame(cni_env(CNI_NETNS=None), config()),
        CniCode.INVALID_ENV,
        "CNI_NETNS is not set (required for ADD)",
    ),
    (
        "relative netns",
        frame(cni_env(CNI_NETNS="netns/x"), config()),
        CniCode.INVALID_ENV,
        "CNI_NETNS 'netns/x' is not an absolute path",
    ),
    (
        "no pod name",
        frame(cni_env(CNI_ARGS="K8S_POD_NAMESPACE=a"), config()),
        CniCode.INVALID_ENV,
        "CNI_ARGS has no K8S_POD_NAME",
    ),
    (
        "no args",
        frame(cni_env(CNI_ARGS=None), config()),
        CniCode.INVALID_ENV,
        "CNI_ARGS has no K8S_POD_NAMESPACE",
    ),
    (
        "CHECK on 0.3.1",
        frame(cni_env("CHECK"), config("0.3.1")),
        CniCode.INCOMPATIBLE_VERSION,
        "CHECK is not defined for cniVersion 0.3.1",
    ),
    (
        "ADD without prevResult",
        frame(cni_env(), config(prev=None)),
        CniCode.INVALID_CONFIG,
        "has no prevResult (ADD of a chained plugin)",
    ),
    (
        "prevResult list",
        frame(cni_env(), config(prev=[])),
        CniCode.INVALID_CONFIG,
        "prevResult is not an object",
    ),
    (
        "ips not list",
        frame(cni_env(), config(prev=_prev(ips={}))),
        CniCode.INVALID_CONFIG,
        "prevResult.ips is not a list",
    ),
    (
        "ip not object",
        frame(cni_env(), config(prev=_prev(ips=["10.0.0.1/24"]))),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[0] is not an object",
    ),
    (
        "no address",
        frame(cni_env(), config(prev=_prev(ips=[{}]))),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[0].address is missing",
    ),
    (
        "bad address",
        frame(
            cni_env(),
            config(prev=_prev(ips=[{"address": "10.0.0.1/24"}, {"address": "10.0.0.300/24"}])),
        ),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[1].address '10.0.0.300/24' is not an address in CIDR",
    ),
    (
        "no prefix",
        frame(cni_env(), config(prev=_prev(ips=[{"address": "10.0.0.1"}]))),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[0].address '10.0.0.1' has no prefix length",
    ),
    (
        "version mismatch",
        frame(
            cni_env(), config("0.4.0", prev=_prev(ips=[{"version": "6", "address": "10.0.0.1/8"}]))
        ),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[0].version '6' does not match",
    ),
    (
        "index out of range",
        frame(cni_env(), config(prev=_prev(ips=[{"address": "10.0.0.1/8", "interface": 3}]))),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[0].interface 3 is out of range (prevResult.interfaces has 3)",
    ),
    (
        "index bool",
        frame(cni_env(), config(prev=_prev(ips=[{"address": "10.0.0.1/8", "interface": True}]))),
        CniCode.INVALID_CONFIG,
        "prevResult.ips[0].interface is not an integer",
    ),
    (
        "interface no name",
        frame(cni_env(), config(prev=_prev(interfaces=[{"mac": "x"}]))),
        CniCode.INVALID_CONFIG,
        "prevResult.interfaces[0].name is missing",
    ),
    (
        "sandbox not str",
        frame(cni_env(), config(prev=_prev(interfaces=[{"name": "e", "sandbox": 1}]))),
        CniCode.INVALID_CONFIG,
        "prevResult.interfaces[0].sandbox is not a string",
    ),
    (
        "config too big",
        frame(cni_env(), b" " * (protocol.MAX_CONFIG_BYTES + 1)),
        CniCode.INVALID_CONFIG,
        "more than 1048576",
    ),
]


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [pytest.param(d, c, m, id=i) for i, d, c, m in BAD_REQUESTS],
)
def test_bad_requests_name_the_fault(data: bytes, code: int, message: str) -> None:
    with pytest.raises(CniRequestError) as info:
        parse_request(data)
    assert message in info.value.msg
    assert info.value.code == code


def test_errors_carry_command_and_version_once_known() -> None:
    with pytest.raises(CniRequestError) as info:
        parse_request(frame(cni_env("DEL", CNI_CONTAINERID=None), config("0.4.0", prev=None)))
    assert (info.value.command, info.value.cni_version) == ("DEL", "0.4.0")
    with pytest.raises(CniRequestError) as info:
        parse_request(frame(cni_env("DEL"), b"nope"))
    assert (info.value.command, info.value.cni_version) == ("DEL", None)


CNI_ARGS_TABLE: list[tuple[str, str | None]] = [
    ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", None),
    ("IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;FOO=bar", None),
    ("IgnoreUnknown=true;FOO=bar;", None),
    (";;K8S_POD_NAME=b;", None),
    ("FOO=bar", "unknown key FOO (and no IgnoreUnknown=1)"),
    ("IgnoreUnknown=0;FOO=bar", "unknown key FOO"),
    ("IgnoreUnknown=maybe", "IgnoreUnknown='maybe' is not 1, 0, true or false"),
    ("K8S_POD_NAME", "'K8S_POD_NAME' is not KEY=VALUE"),
    ("=x", "'=x' is not KEY=VALUE"),
    ("K8S_POD_NAME=a;K8S_POD_NAME=b", "K8S_POD_NAME given twice"),
    ("K8S_POD_NAMESPACE=Shop", "K8S_POD_NAMESPACE 'Shop' is not a Kubernetes namespace name"),
    ("K8S_POD_NAME=web_0", "K8S_POD_NAME 'web_0' is not a Kubernetes pod name"),
    ("K8S_POD_UID=a/b", "K8S_POD_UID 'a/b' is not a pod UID"),
    ("K8S_POD_INFRA_CONTAINER_ID=x y", "K8S_POD_INFRA_CONTAINER_ID 'x y' is not a container ID"),
    # a trailing newline ("$" would match before it)
    ("K8S_POD_UID=ab\n", "K8S_POD_UID 'ab\\n' is not a pod UID"),
    ("K8S_POD_INFRA_CONTAINER_ID=ab\n", "K8S_POD_INFRA_CONTAINER_ID 'ab\\n' is not a container ID"),
]


@pytest.mark.parametrize(("raw", "error"), CNI_ARGS_TABLE)
def test_cni_args(raw: str, error: str | None) -> None:
    if error is None:
        parse_cni_args(raw)
        return
    with pytest.raises(CniRequestError) as info:
        parse_cni_args(raw)
    assert error in info.value.msg
    assert info.value.code == CniCode.INVALID_ENV


def test_cni_args_values() -> None:
    args = parse_cni_args(
        "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d7.x;K8S_POD_UID=ab-12"
    )
    assert (args.pod_namespace, args.pod_name, args.pod_uid) == (
        "kube-system",
        "coredns-5d7.x",
        "ab-12",
    )
    assert args.infra_container_id is None


@pytest.mark.parametrize("version", protocol.SUPPORTED_VERSIONS)
def test_success_output_is_prev_result_with_config_version(version: str) -> None:
    out = json.loads(protocol.success_output(version, PREV_RESULT))  # type: ignore[arg-type]
    assert out == {**PREV_RESULT, "cniVersion": version}
    assert next(iter(out)) == "cniVersion"


def test_error_output_and_frame() -> None:
    body = protocol.error_output("0.4.0", CniCode.TRY_AGAIN_LATER, 'pod "x" not ready', "check y")
    assert json.loads(body) == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": 'pod "x" not ready',
        "details": "check y",
    }
    assert "details" not in json.loads(protocol.error_output("1.0.0", 100, "m"))
    assert protocol.response_frame(7, b"xy") == b"NODEMESH-CNI 1 7\nxy"
    with pytest.raises(ValueError, match="out of range"):
        protocol.response_frame(256, b"")
