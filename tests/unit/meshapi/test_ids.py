from __future__ import annotations

import pytest

from meshapi.errors import IdentityError
from meshapi.ids import ServiceKey, SpiffeId


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://cluster.local/ns/default/sa/client",
        "spiffe://example.org/ns/kube-system/sa/a.b-c",
    ],
)
def test_spiffe_round_trip(text: str) -> None:
    assert str(SpiffeId.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http://cluster.local/ns/a/sa/b", "must start with spiffe://"),
        ("spiffe://cluster.local/ns/a", "not a workload identity"),
        ("spiffe://cluster.local/ns/a/sa/b/extra", "not a workload identity"),
        ("spiffe://cluster.local/namespace/a/sa/b", "not a workload identity"),
        ("spiffe://Cluster Local/ns/a/sa/b", "invalid trust domain"),
        ("spiffe://cluster.local/ns/A_B/sa/b", "invalid namespace"),
        ("spiffe://cluster.local/ns/a/sa/", "invalid service account"),
        # "$" matches before a trailing newline: the patterns must match the whole string
        ("spiffe://cluster.local/ns/a/sa/b\n", "invalid service account"),
        ("spiffe://cluster.local/ns/a\n/sa/b", "invalid namespace"),
        ("spiffe://cluster.local\n/ns/a/sa/b", "invalid trust domain"),
        # a DNS subdomain has no empty label
        ("spiffe://cluster.local/ns/a/sa/a..b", "invalid service account"),
        ("spiffe://cluster.local/ns/a/sa/a.-b", "invalid service account"),
        ("spiffe://cluster.local/ns/a/sa/" + "a" * 254, "invalid service account"),
    ],
)
def test_spiffe_rejects(text: str, fragment: str) -> None:
    with pytest.raises(IdentityError, match=fragment):
        SpiffeId.parse(text)


def test_service_key() -> None:
    assert str(ServiceKey.parse("default/server")) == "default/server"
    with pytest.raises(IdentityError):
        ServiceKey.parse("server")
