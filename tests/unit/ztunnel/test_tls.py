from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshapi.ids import SpiffeId
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.errors import TlsIdentityError
from ztunnel.tls import cert_identity, check_trust_domain

ALICE = "spiffe://cluster.local/ns/default/sa/alice"


def _cert(uris: list[str]):  # type: ignore[no-untyped-def]
    ca = TestCA()
    return ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), uris)


def test_single_spiffe_uri() -> None:
    assert cert_identity(_cert([ALICE])) == SpiffeId.parse(ALICE)


@pytest.mark.parametrize(
    "uris",
    [[], [ALICE, "spiffe://cluster.local/ns/default/sa/bob"], ["https://example.com/x"],
     ["spiffe://cluster.local/not/a/workload"]],
)
def test_refused(uris: list[str]) -> None:
    with pytest.raises(TlsIdentityError):
        cert_identity(_cert(uris))


def test_trust_domain() -> None:
    check_trust_domain(SpiffeId.parse(ALICE), "cluster.local")
    with pytest.raises(TlsIdentityError, match="trust domain"):
        check_trust_domain(SpiffeId.parse(ALICE), "other.mesh")
