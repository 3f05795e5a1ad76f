"""The mesh CA: a self-signed root made on first start (or an operator-supplied root or
intermediate), which signs workload certificates and the controller API's server certificate.

Invariants:

* The CA private key is never logged, never served, and written only to ``root-key.pem`` (0600).
* Workload leaves carry exactly one URI SAN, the SPIFFE id; an ECDSA P-256 key; EKU serverAuth and
  clientAuth; ``CA:false``; a random serial; ``notBefore`` backdated by :data:`BACKDATE`;
  ``notAfter`` never beyond the signer's own ``notAfter``.
* The chain handed out is leaf + intermediates, never the root; the root is the trust anchor.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.errors import CaError
from meshapi.ids import SpiffeId

log = logging.getLogger(__name__)

BACKDATE = dt.timedelta(seconds=60)
ROOT_LIFETIME = dt.timedelta(days=3650)
SERVER_CERT_LIFETIME = dt.timedelta(days=365)
ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
SERVER_CERT_FILE = "server-cert.pem"
SERVER_KEY_FILE = "server-key.pem"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A signed certificate: ``chain`` is leaf first, then intermediates (no root)."""

    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def chain_pem(self) -> tuple[str, ...]:
        return tuple(_pem(c) for c in self.chain)

    def root_pem(self) -> str:
        return _pem(self.root)

def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """Signs with ``signer_key``/``signer_cert``; ``intermediates`` sit between it and ``root``."""

    def __init__(
        self,
        signer_cert: x509.Certificate,
        signer_key: SigningKey,
        intermediates: Sequence[x509.Certificate],
        root: x509.Certificate,
    ) -> None:
        self._cert = signer_cert
        self._key = signer_key
        self._intermediates = tuple(intermediates)
        self.root = root

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, ca_dir: Path) -> CertificateAuthority:
        """The self-managed root in ``ca_dir``: created on first start, reused afterwards."""
        cert_path, key_path = ca_dir / ROOT_CERT_FILE, ca_dir / ROOT_KEY_FILE
        if cert_path.exists() and key_path.exists():
            ca = cls.from_files(cert_path, key_path, None)
            log.info("event=ca_loaded root=%s", cert_path)
            return ca
        if cert_path.exists() or key_path.exists():
            present = cert_path if cert_path.exists() else key_path
            raise CaError(
                f"found {present} but not its partner in {ca_dir}; restore both files, or "
                "remove the directory to create a new root (all workload certificates then "
                "need reissuing); if the CA was operator-supplied, pass --ca-cert/--ca-key again"
            )
        ca = cls.create_root()
        try:
            ca_dir.mkdir(parents=True, exist_ok=True)
            _write_private(
                key_path,
                ca._key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            cert_path.write_text(_pem(ca.root))
        except OSError as exc:
            raise CaError(f"cannot write the new CA into {ca_dir}: {exc}") from exc
        log.info("event=ca_created root=%s", cert_path)
        return ca

    @classmethod
    def create_root(cls, common_name: str = "nodemesh root CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, (), cert)

    @classmethod
    def from_files(
        cls, cert_path: Path, key_path: Path, chain_path: Path | None
    ) -> CertificateAuthority:
        """An operator-supplied root (self-signed ``cert_path``) or intermediate (then
        ``chain_path`` holds its issuers up to and including the root)."""
        try:
            cert_pem = cert_path.read_bytes()
            key_pem = key_path.read_bytes()
            chain_pem = chain_path.read_bytes() if chain_path is not None else b""
        except OSError as exc:
            raise CaError(f"cannot read CA material: {exc}") from exc
        return cls.from_pem(
            cert_pem, key_pem, chain_pem, str(cert_path), str(key_path), str(chain_path)
        )

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes = b"",
        cert_path: str = "the CA certificate",
        key_path: str = "the CA key",
        chain_path: str = "the CA chain",
    ) -> CertificateAuthority:
        """As :meth:`from_files`, from PEM bytes; the ``*_path`` name each input in errors."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CaError(f"{cert_path} is not a PEM certificate: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            # the exception text never contains key material
            raise CaError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CaError(f"{key_path}: only ECDSA and RSA CA keys are supported")
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CaError(f"{key_path} does not match the certificate {cert_path}")
        _require_ca(cert, str(cert_path))
        chain: list[x509.Certificate] = []
        if chain_pem.strip():
            try:
                chain = x509.load_pem_x509_certificates(chain_pem)
            except ValueError as exc:
                raise CaError(f"{chain_path} is not a list of PEM certificates: {exc}") from exc
        if _is_self_signed(cert):
            if chain:
                raise CaError(
                    f"{cert_path} is a self-signed root; --ca-chain is only for intermediates"
                )
            return cls(cert, key, (), cert)
        if not chain:
            raise CaError(
                f"{cert_path} is not self-signed (an intermediate): pass --ca-chain with its "
                "issuers up to and including the root"
            )
        child = cert
        for i, parent in enumerate(chain):
            _require_ca(parent, f"{chain_path}[{i}]")
            if not _signed_by(child, parent):
                raise CaError(
                    f"{chain_path}[{i}] ({parent.subject.rfc4514_string()}) did not sign "
                    f"{child.subject.rfc4514_string()}; order the chain from the intermediate's "
                    "issuer up to the root"
                )
            child = parent
        root = chain[-1]
        if not _is_self_signed(root):
            raise CaError(f"{chain_path} must end with the self-signed root certificate")
        return cls(cert, key, tuple(chain[:-1]) if len(chain) > 1 else (), root)

    # ---- properties --------------------------------------------------------------------------

    @property
    def signer_cert(self) -> x509.Certificate:
        return self._cert

    @property
    def not_after(self) -> dt.datetime:
        return self._cert.not_valid_after_utc

    def root_pem(self) -> str:
        return _pem(self.root)

    def signer_key_pem(self) -> bytes:
        """The signing key, PKCS#8 PEM: only for storing it (0600 file, Kubernetes Secret)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def chain_pem(self) -> bytes:
        """The signer's issuers up to and including the root (empty for a root signer)."""
        if self._cert == self.root:
            return b""
        return "".join(_pem(c) for c in (*self._intermediates, self.root)).encode()

    def signer_cert_pem(self) -> bytes:
        return _pem(self._cert).encode()

    def write_root(self, path: Path) -> None:
        """Publish the trust anchor (never the key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(_pem(self.root))
        os.replace(tmp, path)

    def _chain_after(self) -> tuple[x509.Certificate, ...]:
        if self._cert == self.root:
            return ()
        return (self._cert, *self._intermediates)

    def _sign_algorithm(self) -> hashes.SHA256:
        return hashes.SHA256()

    def _lifetime(self, ttl: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
        now = _now()
        not_before = max(now - BACKDATE, self._cert.not_valid_before_utc)
        return not_before, min(now + ttl, self.not_after)

    # ---- signing -----------------------------------------------------------------------------

    def sign_workload(
        self, csr: x509.CertificateSigningRequest, identity: SpiffeId, ttl: dt.timedelta
    ) -> IssuedCert:
        """Sign a workload leaf for ``identity``. The CSR is expected to be validated already
        (``controller.csr.validate_csr``); the key type is checked again here as a last guard."""
        public_key = csr.public_key()
        if not (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1)
        ):
            raise ValueError("workload keys must be ECDSA P-256")
        not_before, not_after = self._lifetime(ttl)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # the subject is empty, so the SAN must be critical (RFC 5280 4.2.1.6)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                critical=True,
            )
            .add_extension(self._aki(), critical=False)
            .sign(self._key, self._sign_algorithm())
        )
        return IssuedCert((cert, *self._chain_after()), self.root)

    def issue_server_cert(
        self, sans: Sequence[str], lifetime: dt.timedelta = SERVER_CERT_LIFETIME
    ) -> tuple[IssuedCert, ec.EllipticCurvePrivateKey]:
        """A TLS server certificate for the controller API; each SAN is an IP or a DNS name."""
        if not sans:
            raise CaError("the API certificate needs at least one --api-san")
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = self._lifetime(lifetime)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(self._aki(), critical=False)
            .sign(self._key, self._sign_algorithm())
        )
        return IssuedCert((cert, *self._chain_after()), self.root), key

    def write_server_cert(self, tls_dir: Path, sans: Sequence[str]) -> tuple[Path, Path]:
        """Issue the API certificate into ``tls_dir``; returns (chain file, key file)."""
        issued, key = self.issue_server_cert(sans)
        cert_path, key_path = tls_dir / SERVER_CERT_FILE, tls_dir / SERVER_KEY_FILE
        try:
            tls_dir.mkdir(parents=True, exist_ok=True)
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            cert_path.write_text("".join(issued.chain_pem()))
        except OSError as exc:
            raise CaError(f"cannot write the API certificate into {tls_dir}: {exc}") from exc
        log.info("event=api_cert_issued sans=%s path=%s", ",".join(sans), cert_path)
        return cert_path, key_path

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    # ECDSA keys sign (TLS 1.3 CertificateVerify) and may do ECDH; they never encipher keys.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _require_ca(cert: x509.Certificate, where: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CaError(f"{where} is not a CA certificate (no basicConstraints)") from None
    if not bc.ca:
        raise CaError(f"{where} is not a CA certificate (basicConstraints CA:false)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise CaError(f"{where} may not sign certificates (keyUsage lacks keyCertSign)")


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _signed_by(cert, cert)


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
