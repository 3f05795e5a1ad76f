"""Fuzz target of the CSR endpoint's validation (:mod:`controller.csr`).

``csr.body``: one ``POST /v1/csr`` body through :func:`parse_request_body`,
:func:`validate_csr` and :func:`authorize` (node ``node-1`` runs ``default/web``), as
``controller.server.Api.csr`` calls them: only :class:`CsrRejected` escapes, with a reason
from ``CSR_REFUSAL_REASONS`` (the metric's label values), a 4xx status and a message; a CSR
that passes carries exactly one URI SAN, the SPIFFE id of ``default/web`` in this trust
domain, and an ECDSA P-256 key whose signature verifies.

Also the inputs' building blocks (keys generated once, CSRs per input) for
``tests/fuzz/test_csr.py``.
"""

from __future__ import annotations

import base64
import functools
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from controller.csr import authorize, parse_request_body, validate_csr
from controller.errors import CsrRejected
from controller.metrics import CSR_REFUSAL_REASONS
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Workload
from tests.fuzz.harness import target

TRUST_DOMAIN = "cluster.local"
NODE = NodeName("node-1")
WORKLOADS = (Workload(PodUid("uid-web"), "web-0", "default", "web",
                      SpiffeId(TRUST_DOMAIN, "default", "web"), NODE,
                      ipaddress.IPv4Address("10.78.1.2"), True),)

KeyType = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
#: generated once (an RSA key takes tens of milliseconds)
KEYS: dict[str, KeyType] = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": rsa.generate_private_key(65537, 2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
OTHER_P256 = ec.generate_private_key(ec.SECP256R1())

GOOD_URI = "spiffe://cluster.local/ns/default/sa/web"
#: one or more of these form the SAN; only GOOD_URI alone is acceptable
SANS: dict[str, x509.GeneralName] = {
    "good": x509.UniformResourceIdentifier(GOOD_URI),
    "other-sa": x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/db"),
    "other-ns": x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/web"),
    "other-td": x509.UniformResourceIdentifier("spiffe://evil.org/ns/default/sa/web"),
    "dotdot": x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/.."),
    "dotdot-path": x509.UniformResourceIdentifier(
        "spiffe://cluster.local/ns/default/sa/web/../../ns/kube-system/sa/admin"),
    "percent": x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/w%65b"),
    "percent-slash": x509.UniformResourceIdentifier(
        "spiffe://cluster.local/ns/default%2Fsa%2Fweb/sa/web"),
    "upper": x509.UniformResourceIdentifier("spiffe://cluster.local/ns/Default/sa/web"),
    "query": x509.UniformResourceIdentifier(GOOD_URI + "?x=1"),
    "fragment": x509.UniformResourceIdentifier(GOOD_URI + "#x"),
    "trailing-slash": x509.UniformResourceIdentifier(GOOD_URI + "/"),
    "userinfo": x509.UniformResourceIdentifier("spiffe://u@cluster.local/ns/default/sa/web"),
    "port": x509.UniformResourceIdentifier("spiffe://cluster.local:1/ns/default/sa/web"),
    "scheme-case": x509.UniformResourceIdentifier("SPIFFE://cluster.local/ns/default/sa/web"),
    "not-spiffe": x509.UniformResourceIdentifier("https://cluster.local/ns/default/sa/web"),
    "empty-uri": x509.UniformResourceIdentifier("spiffe://"),
    "dots-sa": x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/a..b"),
    "dns": x509.DNSName("web.default.svc"),
    "ip": x509.IPAddress(ipaddress.IPv4Address("10.78.1.2")),
    "email": x509.RFC822Name("web@cluster.local"),
    "rid": x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
}


@functools.cache
def build_csr(key_name: str, sans: tuple[str, ...], *, extra_ext: bool, ca: bool,
              subject: bool) -> bytes:
    """A DER CSR signed by its own key. Cached: ECDSA signatures are randomized (so is their
    length), and hypothesis needs the same draws to give the same bytes when it replays."""
    key = KEYS[key_name]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web")]) if subject
        else x509.Name([]))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([SANS[s] for s in sans]), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    if extra_ext:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def to_pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    b64 = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{b64}-----END {label}-----\n"


@target("csr.body", max_bytes=4 * 1024 * 1024)
def csr_body(data: bytes) -> None:
    try:
        pem = parse_request_body(data)
        csr, identity = validate_csr(pem, TRUST_DOMAIN)
        authorize(NODE, identity, WORKLOADS)
    except CsrRejected as exc:
        assert exc.reason in CSR_REFUSAL_REASONS, exc.reason
        assert exc.status in (400, 403, 413), exc.status
        assert exc.message
        return
    assert str(identity) == GOOD_URI
    assert csr.is_signature_valid
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert len(names) == 1 and names[0].value == GOOD_URI
