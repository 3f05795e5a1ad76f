"""Validation of workload CSRs (pure: bytes in, a parsed CSR and identity out, or
:class:`CsrRejected` with a metric reason and a message saying exactly what was wrong).

Authorization — whether *this node* may have *this identity* — is :func:`authorize`, also pure:
a node may get an identity only if a workload with that namespace and service account is
scheduled on it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from controller.errors import CsrRejected
from meshapi import wire
from meshapi.csr import MAX_CSR_BYTES
from meshapi.errors import IdentityError, WireError
from meshapi.ids import NodeName, SpiffeId
from meshapi.model import Workload


def parse_request_body(body: bytes) -> bytes:
    """The PEM CSR out of ``{"csr": PEM}``."""
    if len(body) > MAX_CSR_BYTES:
        raise CsrRejected("too_large", f"request body exceeds {MAX_CSR_BYTES} bytes", 413)
    try:
        obj = wire.loads(body)
    except WireError as exc:
        raise CsrRejected("malformed", f'body is not JSON {{"csr": "<PEM>"}}: {exc}') from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("csr"), str):
        raise CsrRejected("malformed", 'body must be a JSON object {"csr": "<PEM>"}')
    pem: str = obj["csr"]
    if not pem.isascii():
        # PEM is ASCII; a lone surrogate ("\ud800") would not even encode
        raise CsrRejected("malformed", "csr is not a PEM PKCS#10 request: not ASCII text")
    return pem.encode("ascii")


def validate_csr(pem: bytes, trust_domain: str) -> tuple[x509.CertificateSigningRequest, SpiffeId]:
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CsrRejected("malformed", f"csr is not a PEM PKCS#10 request: {exc}") from exc
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CsrRejected("signature", f"csr signature cannot be checked: {exc}") from exc
    if not signature_ok:
        raise CsrRejected("signature", "csr signature is invalid (not signed by its own key)")
    try:
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CsrRejected("key_type", f"csr public key is unsupported: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = (
            f"EC {key.curve.name}"
            if isinstance(key, ec.EllipticCurvePublicKey)
            else (type(key).__name__.removeprefix("_"))
        )
        raise CsrRejected("key_type", f"csr key must be ECDSA P-256, got {kind}")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CsrRejected(
            "san", "csr has no subjectAltName; it needs exactly one URI SAN with the SPIFFE id"
        ) from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRejected("malformed", f"csr extensions cannot be parsed: {exc}") from exc
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        shown = ", ".join(_show(n) for n in names)
        raise CsrRejected(
            "san", f"csr must carry exactly one URI SAN (the SPIFFE id), got [{shown}]"
        )
    uri = names[0].value
    try:
        identity = SpiffeId.parse(uri)
    except IdentityError as exc:
        raise CsrRejected("san", f"csr SAN: {exc}") from exc
    if identity.trust_domain != trust_domain:
        raise CsrRejected(
            "trust_domain",
            f"csr identity {identity} is not in this mesh's trust domain {trust_domain!r}",
        )
    return csr, identity


def _show(name: x509.GeneralName) -> str:
    return f"{type(name).__name__}:{name.value}"


def authorize(
    node: NodeName,
    identity: SpiffeId,
    workloads: Iterable[Workload],
    scheduled: Collection[tuple[str, str, str]] = (),
) -> None:
    """Raise ``CsrRejected(forbidden, 403)`` unless a pod with ``identity``'s namespace and
    service account is scheduled on ``node``: a workload, or an entry of ``scheduled``
    ((node, namespace, service account) of pods that have no IP yet)."""
    if (node, identity.namespace, identity.service_account) in scheduled:
        return
    for w in workloads:
        if (
            w.node == node
            and w.namespace == identity.namespace
            and w.service_account == identity.service_account
        ):
            return
    raise CsrRejected(
        "forbidden",
        f"node {node!r} may not have identity {identity}: no pod with namespace "
        f"{identity.namespace!r} and service account {identity.service_account!r} is scheduled "
        "on it",
        403,
    )
