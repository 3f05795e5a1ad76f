"""Workload identity of a TLS peer.

The chain has already been verified against the mesh root by the SSL context (CERT_REQUIRED on
both sides). What this module adds is the identity: a workload certificate carries exactly one
URI SAN, a SPIFFE id; anything else (no certificate, no URI SAN, several URI SANs, a URI that is
not a workload SPIFFE id) is refused. Host names are never checked: the SPIFFE id is the name.
"""

from __future__ import annotations

import ssl

from cryptography import x509

from meshapi.errors import IdentityError
from meshapi.ids import SpiffeId
from ztunnel.errors import TlsIdentityError


def cert_identity(cert: x509.Certificate) -> SpiffeId:
    """The single SPIFFE URI SAN of ``cert``; raises TlsIdentityError."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise TlsIdentityError(
            "certificate has no subjectAltName; workload certificates carry one SPIFFE URI SAN"
        ) from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise TlsIdentityError(
            f"certificate has {len(uris)} URI SANs, expected exactly one SPIFFE id: {uris!r}"
        )
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError as exc:
        raise TlsIdentityError(f"certificate URI SAN is not a workload identity: {exc}") from exc


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    """The single SPIFFE URI SAN of the verified peer certificate; raises TlsIdentityError."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise TlsIdentityError("TLS peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TlsIdentityError(f"TLS peer certificate cannot be parsed: {exc}") from exc
    return cert_identity(cert)


def check_trust_domain(identity: SpiffeId, trust_domain: str) -> None:
    """Raise TlsIdentityError unless ``identity`` belongs to ``trust_domain``."""
    if identity.trust_domain != trust_domain:
        raise TlsIdentityError(
            f"peer identity {identity} is not in trust domain {trust_domain!r}; "
            "is the peer using another mesh's CA?"
        )
