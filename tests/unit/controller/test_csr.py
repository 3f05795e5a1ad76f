from __future__ import annotations

import ipaddress
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controller.csr import authorize, parse_request_body, validate_csr
from controller.errors import CsrRejected
from meshapi.csr import MAX_CSR_BYTES
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload

from .crypto_helpers import make_csr

TD = "cluster.local"


def test_valid_csr() -> None:
    _, identity = validate_csr(make_csr(), TD)
    assert identity == SpiffeId(TD, "default", "web")


def _tampered() -> bytes:
    import base64
    import re

    pem = make_csr().decode()
    body = re.sub(r"-----[^-]+-----", "", pem).replace("\n", "")
    der = bytearray(base64.b64decode(body))
    der[-5] ^= 0x01  # inside the signature
    b64 = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n".encode()


@pytest.mark.parametrize(
    ("case", "pem", "reason", "fragment"),
    [
        ("garbage", b"hello", "malformed", "not a PEM"),
        ("rsa key", make_csr(key=rsa.generate_private_key(65537, 2048)), "key_type", "P-256"),
        (
            "p384 key",
            make_csr(key=ec.generate_private_key(ec.SECP384R1())),
            "key_type",
            "secp384r1",
        ),
        (
            "two URI SANs",
            make_csr(["spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/c"]),
            "san",
            "exactly one",
        ),
        ("URI plus DNS", make_csr(dns=["web.default"]), "san", "exactly one"),
        ("no SAN", make_csr([]), "san", "no subjectAltName"),
        ("not spiffe", make_csr(["https://example.com/x"]), "san", "not a SPIFFE id"),
        (
            "not a workload id",
            make_csr(["spiffe://cluster.local/foo"]),
            "san",
            "not a workload identity",
        ),
        (
            "wrong trust domain",
            make_csr(["spiffe://evil.org/ns/default/sa/web"]),
            "trust_domain",
            "evil.org",
        ),
        ("bad signature", _tampered(), "signature", "signature"),
    ],
)
def test_invalid_csrs(case: str, pem: bytes, reason: str, fragment: str) -> None:
    with pytest.raises(CsrRejected) as info:
        validate_csr(pem, TD)
    assert info.value.reason == reason, info.value.message
    assert fragment in info.value.message
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("body", "reason", "status"),
    [
        (b"not json", "malformed", 400),
        (b'["csr"]', "malformed", 400),
        (b'{"csr": 5}', "malformed", 400),
        (b"x" * (MAX_CSR_BYTES + 1), "too_large", 413),
    ],
)
def test_request_body(body: bytes, reason: str, status: int) -> None:
    with pytest.raises(CsrRejected) as info:
        parse_request_body(body)
    assert (info.value.reason, info.value.status) == (reason, status)
    assert parse_request_body(json.dumps({"csr": "PEM"}).encode()) == b"PEM"


def _w(node: str, ns: str = "default", sa: str = "web") -> Workload:
    return Workload(
        PodUid(f"{node}-{ns}-{sa}"),
        "p",
        ns,
        sa,
        SpiffeId(TD, ns, sa),
        NodeName(node),
        ipaddress.IPv4Address("10.0.0.1"),
        True,
    )


def test_authorization_rule() -> None:
    workloads = [_w("node-2"), _w("node-1", sa="db")]
    web = SpiffeId(TD, "default", "web")
    authorize(NodeName("node-2"), web, workloads)
    authorize(NodeName("node-1"), SpiffeId(TD, "default", "db"), workloads)
    with pytest.raises(CsrRejected) as info:
        authorize(NodeName("node-1"), web, workloads)
    assert info.value.status == 403 and info.value.reason == "forbidden"
    assert "node-1" in info.value.message and str(web) in info.value.message
    with pytest.raises(CsrRejected):
        authorize(NodeName("node-1"), SpiffeId(TD, "other", "db"), workloads)


def test_a_scheduled_pod_without_ip_authorizes_its_identity() -> None:
    # on Kubernetes the CNI plugin holds a new pod's sandbox until the ztunnel serves it, which
    # needs the certificate; the pod gets its IP only after that
    web = SpiffeId(TD, "default", "web")
    authorize(NodeName("node-1"), web, [], {("node-1", "default", "web")})
    with pytest.raises(CsrRejected):
        authorize(NodeName("node-2"), web, [], {("node-1", "default", "web")})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # RecursionError and UnicodeEncodeError reached aiohttp (a 500, not counted)
        (b'{"csr": ' + b"[" * 8000 + b"]" * 8000 + b"}", "nested deeper"),
        (b'{"csr": "-----BEGIN CERTIFICATE REQUEST-----\\ud800"}', "not ASCII"),
        (b'{"csr": "a", "csr": "b"}', "appears twice"),
        (b'{"csr": NaN}', "NaN"),
    ],
    ids=["deep-nesting", "lone-surrogate", "repeated-key", "nan"],
)
def test_hostile_bodies_are_malformed(body: bytes, fragment: str) -> None:
    with pytest.raises(CsrRejected) as info:
        parse_request_body(body)
    assert (info.value.reason, info.value.status) == ("malformed", 400)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("spiffe://cluster.local/ns/default/sa/..", "san"),
        ("spiffe://cluster.local/ns/default/sa/web/../../ns/kube-system/sa/admin", "san"),
        ("spiffe://cluster.local/ns/default/sa/w%65b", "san"),
        ("spiffe://cluster.local/ns/default%2Fsa%2Fweb/sa/web", "san"),
        ("spiffe://cluster.local/ns/Default/sa/web", "san"),
        ("spiffe://cluster.local/ns/default/sa/web?x=1", "san"),
        ("spiffe://u@cluster.local/ns/default/sa/web", "san"),
        ("spiffe://cluster.local:1/ns/default/sa/web", "san"),
    ],
)
def test_odd_spiffe_ids_are_refused(uri: str, reason: str) -> None:
    with pytest.raises(CsrRejected) as info:
        validate_csr(make_csr([uri]), TD)
    assert info.value.reason == reason, info.value.message


def test_ed25519_and_truncated_der_are_refused() -> None:
    import base64
    import re

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/web")]),
               critical=False)
           .sign(key, None).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CsrRejected) as info:
        validate_csr(csr, TD)
    assert info.value.reason == "key_type" and "Ed25519" in info.value.message
    der = base64.b64decode(re.sub(r"-----[^-]+-----|\n", "", make_csr().decode()))
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der[:-20]) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CsrRejected) as info:
        validate_csr(pem, TD)
    assert info.value.reason == "malformed"


def test_unknown_curve_is_refused_not_raised() -> None:
    # cryptography raised UnsupportedAlgorithm from is_signature_valid: a 500, not counted
    import base64
    import re

    der = base64.b64decode(re.sub(r"-----[^-]+-----|\n", "", make_csr().decode()))
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert p256 in der
    bogus = der.replace(p256, bytes.fromhex("06082a8648ce3d030109"))
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bogus) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CsrRejected) as info:
        validate_csr(pem, TD)
    assert info.value.reason in ("signature", "key_type", "malformed"), info.value.message
    assert info.value.status == 400


def test_csr_version_other_than_1_is_malformed() -> None:
    # load_pem_x509_csr raised x509.InvalidVersion (not a ValueError): a 500, not counted
    import base64
    import re

    der = bytearray(base64.b64decode(re.sub(r"-----[^-]+-----|\n", "", make_csr().decode())))
    at = der.find(bytes.fromhex("020100"))  # CertificationRequestInfo.version = 0 (v1)
    der[at + 2] = 1
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CsrRejected) as info:
        validate_csr(pem, TD)
    assert info.value.reason == "malformed" and "not a PEM PKCS#10" in info.value.message
