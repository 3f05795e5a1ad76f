from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench import sidecar


def test_client_config_routes_each_app_port_over_verified_mtls() -> None:
    cfg = sidecar.client_config("10.78.2.2", "/tmp/c", "/tmp/c/p.pid", 9950)
    assert "    nbthread 1" in cfg.splitlines()
    assert "    tune.bufsize 262144" in cfg.splitlines()
    assert "    maxconn 9950" in cfg.splitlines()
    assert "ssl-default-server-options ssl-min-ver TLSv1.3" in cfg
    assert "    user haproxy" in cfg.splitlines()
    for app_port, (local, _tls) in sidecar.PORTS.items():
        assert f"listen outbound_{app_port}" in cfg
        assert f"    bind 127.0.0.1:{local}" in cfg.splitlines()
    server_lines = [ln for ln in cfg.splitlines() if ln.startswith("    server ")]
    assert len(server_lines) == len(sidecar.PORTS)
    for ln in server_lines:
        assert " ssl crt /tmp/c/client.pem ca-file /tmp/c/ca.pem verify required" in ln
        assert f"verifyhost {sidecar.SERVER_NAME}" in ln
    assert any("10.78.2.2:15051 " in ln for ln in server_lines)
    assert any("10.78.2.2:15052 " in ln for ln in server_lines)


def test_server_config_terminates_mtls_and_forwards_to_localhost() -> None:
    cfg = sidecar.server_config("10.78.2.2", "/tmp/c", "/tmp/c/p.pid", 100)
    lines = cfg.splitlines()
    assert ("    bind 10.78.2.2:15051 ssl crt /tmp/c/server.pem ca-file /tmp/c/ca.pem "
            "verify required") in lines
    assert "    server app 127.0.0.1:8080" in lines
    assert "    server app 127.0.0.1:5201" in lines
    assert "ssl-default-bind-options ssl-min-ver TLSv1.3" in cfg
    assert "mode tcp" in cfg


def test_configs_reject_a_bad_address() -> None:
    for build in (sidecar.client_config, sidecar.server_config):
        try:
            build("10.78.2.2; rm", "/d", "/d/p", 1)
        except ValueError:
            continue
        raise AssertionError("an address that is not an IPv4 address was accepted")


def test_capture_rules_exempt_the_sidecar_then_redirect_app_ports() -> None:
    rules = sidecar.capture_rules("10.78.2.2")
    assert rules[0] == ["-t", "nat", "-N", sidecar.CHAIN]
    # the exemption comes before any REDIRECT, and the chain is hooked last (fully built)
    assert rules[1] == ["-t", "nat", "-A", sidecar.CHAIN, "-m", "owner", "--uid-owner",
                        "haproxy", "-j", "RETURN"]
    assert rules[-1] == ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", sidecar.CHAIN]
    redirects = [r for r in rules if "REDIRECT" in r]
    assert ["-t", "nat", "-A", sidecar.CHAIN, "-p", "tcp", "-d", "10.78.2.2", "--dport", "8080",
            "-j", "REDIRECT", "--to-ports", "15041"] in redirects
    assert len(redirects) == len(sidecar.PORTS)


def test_cleanup_removes_by_name_what_capture_added() -> None:
    hook = sidecar.capture_rules("10.0.0.1")[-1]
    cleanup = sidecar.cleanup_rules()
    assert cleanup[0] == [*hook[:2], "-D", *hook[3:]]
    assert cleanup[1:] == [["-t", "nat", "-F", sidecar.CHAIN], ["-t", "nat", "-X", sidecar.CHAIN]]


def test_sidecar_ports_are_in_the_reserved_range_and_distinct() -> None:
    ports = [p for pair in sidecar.PORTS.values() for p in pair]
    assert len(set(ports)) == len(ports)
    assert all(15000 <= p <= 15100 for p in ports)
    assert not {15000, 15001, 15006, 15008, 15020, 15021} & set(ports)  # the mesh's


def test_max_connections_fits_two_descriptors_each() -> None:
    assert sidecar.max_connections(20000) == (20000 - sidecar.FD_RESERVE) // 2
    assert sidecar.max_connections(10) == 1


def test_certs_are_p256_leaves_of_one_ca_with_the_right_usage() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certs = sidecar.make_certs(now)
    ca = x509.load_pem_x509_certificate(certs.ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for pem, name, usage in ((certs.server_pem, sidecar.SERVER_NAME,
                              ExtendedKeyUsageOID.SERVER_AUTH),
                             (certs.client_pem, sidecar.CLIENT_NAME,
                              ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert b"PRIVATE KEY" in pem  # HAProxy's crt: certificate and key in one file
        leaf = x509.load_pem_x509_certificate(pem)
        key = leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        leaf.verify_directly_issued_by(ca)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) \
            == [usage]
        assert leaf.not_valid_before_utc < now < leaf.not_valid_after_utc
