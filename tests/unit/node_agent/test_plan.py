"""Redirect plans against golden files. Regenerate with ``NODEMESH_UPDATE_GOLDEN=1``."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from node_agent.redirect.plan import (
    OUTPUT_CHAIN,
    PREROUTING_CHAIN,
    Settings,
    plan_for_pod,
    render_iptables_save,
)

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden" / "iptables"
UPDATE_ENV = "NODEMESH_UPDATE_GOLDEN"

POD = ipaddress.IPv4Address("10.78.1.2")
CASES = {
    "pod-default": Settings(),
    "pod-host-probe": Settings(host_probe_ip=ipaddress.IPv4Address("10.78.1.1")),
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN_DIR / f"{name}.golden"
    if os.environ.get(UPDATE_ENV):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with {UPDATE_ENV}=1 to create it"
    assert text == path.read_text(), f"{path} differs: review, then rerun with {UPDATE_ENV}=1"


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_matches_golden(name: str) -> None:
    check_golden(name, render_iptables_save(plan_for_pod(POD, CASES[name])))


def test_plan_is_the_same_for_every_pod() -> None:
    other = ipaddress.IPv4Address("10.78.2.9")
    assert plan_for_pod(POD, Settings()) == plan_for_pod(other, Settings())


def test_order_exempts_before_redirect() -> None:
    plan = plan_for_pod(POD, CASES["pod-host-probe"])
    for name in (OUTPUT_CHAIN, PREROUTING_CHAIN):
        chain = plan.chain(name)
        assert chain is not None
        targets = [r.target for r in chain.rules]
        assert targets[-1] == "REDIRECT" and set(targets[:-1]) == {"RETURN"}


@pytest.mark.parametrize("bad", ["0.0.0.0", "127.0.0.1"])
def test_rejects_non_pod_address(bad: str) -> None:
    with pytest.raises(ValueError, match="not a pod address"):
        plan_for_pod(ipaddress.IPv4Address(bad), Settings())
