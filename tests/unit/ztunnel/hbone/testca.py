"""A tiny test CA (cryptography only) and a CertFetcher that signs with it."""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshapi.csr import CsrResponse
from meshapi.ids import SpiffeId


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TestCA:
    __test__ = False

    def __init__(self, name: str = "test mesh root", ttl: float = 3600.0) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.root_pem = _pem(self.cert)
        self.ttl = ttl
        self.signed = 0
        self.fail_next = 0

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, uris: list[str], ttl: float | None = None,
        *, backdate: float = 0.0,
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=backdate)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(seconds=ttl or self.ttl))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if uris:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=True,
            )
        return b.sign(self.key, hashes.SHA256())

    async def sign(self, csr_pem: str) -> CsrResponse:
        """The CertFetcher protocol."""
        from ztunnel.errors import CertError

        if self.fail_next:
            self.fail_next -= 1
            raise CertError("test CA refuses (fail_next)")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        pub = csr.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        leaf = self.issue(pub, uris, backdate=1.0)
        self.signed += 1
        return CsrResponse((_pem(leaf),), self.root_pem, leaf.not_valid_after_utc.isoformat())

    def client_context(
        self, identity: SpiffeId | str | None, *, self_signed: bool = False,
        trust: str | None = None,
    ) -> ssl.SSLContext:
        """A TLS 1.3 h2 client context with a leaf for ``identity`` (or no cert)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["h2"])
        ctx.load_verify_locations(cadata=trust or self.root_pem)
        if identity is not None:
            key = ec.generate_private_key(ec.SECP256R1())
            if self_signed:
                other = TestCA("attacker")
                other.key = key
                leaf = other.issue(key.public_key(), [str(identity)])
                # self-signed: issuer == subject == empty, signed by its own key
            else:
                leaf = self.issue(key.public_key(), [str(identity)])
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / "c.pem"
                p.write_bytes(
                    key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                    + leaf.public_bytes(serialization.Encoding.PEM)
                )
                ctx.load_cert_chain(p)
        return ctx
