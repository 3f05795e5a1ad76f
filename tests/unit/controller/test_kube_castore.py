"""The CA in a Secret: parsing (pure) and the body written."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller.ca import CertificateAuthority
from controller.errors import CaError
from controller.kube.castore import ca_from_secret, secret_body

from .crypto_helpers import key_pem, make_ca_cert, pem


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_root()


def test_secret_round_trip(ca: CertificateAuthority) -> None:
    body: Any = secret_body("ns", "nodemesh-ca", ca)
    assert body["metadata"] == {
        "name": "nodemesh-ca",
        "namespace": "ns",
        "labels": {"app.kubernetes.io/managed-by": "nodemesh-controller"},
    }
    assert set(body["data"]) == {"ca.crt", "ca.key"}
    loaded = ca_from_secret(body, "Secret ns/nodemesh-ca")
    assert loaded.root_pem() == ca.root_pem()


def secret(**data: str) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "data": data}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("nope", "is not an object"),
        ({"data": []}, "data is not an object"),
        (secret(), "lacks ca.crt, ca.key"),
        (secret(**{"ca.crt": "!!!", "ca.key": "QQ=="}), "data[ca.crt] is not valid base64"),
        (secret(**{"ca.crt": b64(b"junk"), "ca.key": b64(b"junk")}), "data[ca.crt] is not a PEM"),
    ],
)
def test_bad_secrets_say_what_to_fix(body: object, fragment: str) -> None:
    with pytest.raises(CaError, match="Secret ns/s") as info:
        ca_from_secret(body, "Secret ns/s")
    assert fragment in str(info.value)


def test_key_of_another_certificate_is_refused_without_showing_it(
    ca: CertificateAuthority,
) -> None:
    other = CertificateAuthority.create_root()
    body = secret(**{"ca.crt": b64(ca.signer_cert_pem()), "ca.key": b64(other.signer_key_pem())})
    with pytest.raises(CaError, match="does not match") as info:
        ca_from_secret(body, "Secret ns/s")
    assert "PRIVATE KEY" not in str(info.value)


def test_intermediate_with_chain() -> None:
    root_key, int_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = make_ca_cert("root", root_key)
    intermediate = make_ca_cert("intermediate", int_key, (root, root_key))
    body = secret(
        **{
            "ca.crt": b64(pem(intermediate)),
            "ca.key": b64(key_pem(int_key)),
            "ca-chain.crt": b64(pem(root)),
        }
    )
    loaded = ca_from_secret(body, "Secret ns/s")
    assert loaded.root == root and loaded.signer_cert == intermediate
    assert loaded.chain_pem() == pem(root)
