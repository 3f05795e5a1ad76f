"""Run inside a pod: try an HBONE request to HOST:15008 as an attacker would, and print what
happened as one JSON line: {"handshake": bool, "status": int | null, "error": str | null}.

--cert none         no client certificate
--cert selfsigned   a self-signed certificate carrying a valid-looking SPIFFE URI SAN
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import ssl
import tempfile

import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(identity: str, directory: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "attacker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def probe(host: str, target: str, cert: str) -> dict[str, object]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as d:
        if cert == "selfsigned":
            ctx.load_cert_chain(*self_signed("spiffe://cluster.local/ns/default/sa/client", d))
        result: dict[str, object] = {"handshake": False, "status": None, "error": None}
        try:
            raw = socket.create_connection((host, 15008), timeout=5)
            tls = ctx.wrap_socket(raw)
            result["handshake"] = True
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "CONNECT"), (":authority", target)])
            tls.sendall(conn.data_to_send())
            while result["status"] is None:
                data = tls.recv(65536)
                if not data:
                    result["error"] = "connection closed"
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        result["status"] = int(dict(event.headers)[b":status"])
                tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError) as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("--target", required=True)
    parser.add_argument("--cert", choices=["none", "selfsigned"], required=True)
    args = parser.parse_args()
    print(json.dumps(probe(args.host, args.target, args.cert)))


if __name__ == "__main__":
    main()
