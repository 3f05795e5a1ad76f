from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.ca import CertificateAuthority
from controller.errors import CaError
from meshapi.ids import SpiffeId

from .crypto_helpers import key_pem, make_ca_cert, make_csr, pem

WEB = SpiffeId("cluster.local", "default", "web")


def test_root_created_once_and_reused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    first = CertificateAuthority.load_or_create(ca_dir)
    key_file = ca_dir / "root-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    root = first.root
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert bc.ca and ku.key_cert_sign
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    second = CertificateAuthority.load_or_create(ca_dir)
    assert second.root == root
    issued = second.sign_workload(x509.load_pem_x509_csr(make_csr()), WEB, dt.timedelta(hours=1))
    issued.leaf.verify_directly_issued_by(root)


def test_half_present_root_is_a_clear_error(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "root-key.pem").unlink()
    with pytest.raises(CaError, match="not its partner"):
        CertificateAuthority.load_or_create(tmp_path / "ca")


def test_leaf_properties() -> None:
    ca = CertificateAuthority.create_root()
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issued = ca.sign_workload(x509.load_pem_x509_csr(make_csr()), WEB, dt.timedelta(hours=2))
    leaf = issued.leaf
    assert issued.chain == (leaf,)  # the root is not part of the chain
    assert issued.root == ca.root
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(str(WEB))]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert leaf.not_valid_before_utc <= before - dt.timedelta(seconds=59)
    lifetime = leaf.not_valid_after_utc - before
    assert (
        dt.timedelta(hours=2) - dt.timedelta(seconds=5)
        <= lifetime
        <= dt.timedelta(hours=2, seconds=5)
    )
    other = ca.sign_workload(x509.load_pem_x509_csr(make_csr()), WEB, dt.timedelta(hours=2))
    assert other.leaf.serial_number != leaf.serial_number


def test_ttl_capped_at_signer_not_after(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_ca_cert("short root", key, days=1)
    (tmp_path / "c.pem").write_bytes(pem(cert))
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    ca = CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem", None)
    issued = ca.sign_workload(x509.load_pem_x509_csr(make_csr()), WEB, dt.timedelta(days=30))
    assert issued.leaf.not_valid_after_utc == cert.not_valid_after_utc


def test_operator_supplied_intermediate_chain(tmp_path: Path) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_ca_cert("op root", root_key)
    mid1_key = ec.generate_private_key(ec.SECP256R1())
    mid1 = make_ca_cert("op mid 1", mid1_key, (root, root_key))
    mid2_key = ec.generate_private_key(ec.SECP256R1())
    mid2 = make_ca_cert("op mid 2", mid2_key, (mid1, mid1_key))
    (tmp_path / "cert.pem").write_bytes(pem(mid2))
    (tmp_path / "key.pem").write_bytes(key_pem(mid2_key))
    (tmp_path / "chain.pem").write_bytes(pem(mid1) + pem(root))
    ca = CertificateAuthority.from_files(
        tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "chain.pem"
    )
    assert ca.root == root
    issued = ca.sign_workload(x509.load_pem_x509_csr(make_csr()), WEB, dt.timedelta(hours=1))
    assert issued.chain[1:] == (mid2, mid1)
    issued.leaf.verify_directly_issued_by(mid2)
    # without the chain: a clear error
    with pytest.raises(CaError, match="--ca-chain"):
        CertificateAuthority.from_files(tmp_path / "cert.pem", tmp_path / "key.pem", None)
    # a chain in the wrong order
    (tmp_path / "bad-chain.pem").write_bytes(pem(root) + pem(mid1))
    with pytest.raises(CaError, match="did not sign"):
        CertificateAuthority.from_files(
            tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "bad-chain.pem"
        )


def test_operator_supplied_material_is_validated(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ca.pem").write_bytes(pem(make_ca_cert("root", key)))
    (tmp_path / "leaf.pem").write_bytes(pem(make_ca_cert("leaf", key, ca=False)))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    (tmp_path / "other.pem").write_bytes(key_pem(other))
    (tmp_path / "junk.pem").write_bytes(b"not pem")
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "other.pem", None)
    with pytest.raises(CaError, match="not a CA"):
        CertificateAuthority.from_files(tmp_path / "leaf.pem", tmp_path / "key.pem", None)
    with pytest.raises(CaError, match="not a PEM certificate"):
        CertificateAuthority.from_files(tmp_path / "junk.pem", tmp_path / "key.pem", None)
    with pytest.raises(CaError, match="private key"):
        CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "junk.pem", None)
    with pytest.raises(CaError, match="cannot read"):
        CertificateAuthority.from_files(tmp_path / "missing.pem", tmp_path / "key.pem", None)


def test_server_cert_sans(tmp_path: Path) -> None:
    ca = CertificateAuthority.create_root()
    cert_file, key_file = ca.write_server_cert(tmp_path / "tls", ["127.0.0.1", "controller.local"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (leaf,) = x509.load_pem_x509_certificates(cert_file.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["controller.local"]
    assert b"PRIVATE" not in cert_file.read_bytes()
