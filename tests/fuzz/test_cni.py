"""The fuzz tier for the CNI request (``tests/fuzz/targets/cni.py``): request frames built from
a real containerd-style environment and network configuration (with a chained prevResult),
the variables and the JSON mutated, plus mutated and raw frames."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.fuzz.strategies import near_valid_json
from tests.fuzz.targets.http import mutated
from tests.unit.node_agent.cni.helpers import ARGS, cni_env, config, frame

pytestmark = pytest.mark.fuzz

_VALUES = st.sampled_from([
    "", "x", "ADD", "DEL", "CHECK", "STATUS", "VERSION", "/var/run/netns/a", "relative", "eth0",
    "a" * 16, "eth 0", "..", "a/b", ARGS, ARGS + ";K8S_POD_NAME=x", "K8S_POD_NAMESPACE",
    "IgnoreUnknown=maybe", "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=w", "=;;=", "é", "\x00",
    "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=../x", "-abc", "a" * 5000,
])
_KEYS = st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME",
                         "CNI_ARGS", "CNI_PATH", "CNI_OTHER", "cni_command"])


@st.composite
def _env(draw: st.DrawFn) -> dict[str, str]:
    env = cni_env(draw(st.sampled_from(["ADD", "DEL", "CHECK", "STATUS"])))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(_KEYS)
        if draw(st.booleans()):
            env[key] = draw(_VALUES)
        else:
            env.pop(key, None)
    return env


_CONFIG_KEYS = ["cniVersion", "name", "type", "prevResult", "interfaces", "ips", "address",
                "interface", "sandbox", "version", "gateway"]
_BODY = st.sampled_from([config(), config("0.3.1"), config("1.1.0"), config(prev=None),
                         config("0.4.0", prev={"ips": [{"version": "4",
                                                       "address": "10.1.1.2/24"}]})]
                        ).flatmap(lambda c: near_valid_json(c, _CONFIG_KEYS))
_FRAME = st.builds(frame, _env(), _BODY)


@given(_FRAME)
def test_cni_request_near_valid(data: bytes) -> None:
    check("cni.request", data)


@given(mutated(st.builds(frame, _env(), st.just(json.dumps(config()).encode())))
       | st.binary(max_size=256).map(lambda b: b"NODEMESH-CNI 1\n" + b))
def test_cni_request_mutated_frame(data: bytes) -> None:
    check("cni.request", data)


# a real event loop per input: fewer examples
@settings(max_examples=max(1, settings().max_examples // 3))
@given(_FRAME)
def test_cni_server_near_valid(data: bytes) -> None:
    check("cni.server", data)
