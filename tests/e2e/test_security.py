"""Who may talk HBONE, and who may get which certificate."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.conftest import Cluster

PROBE = str(Path(__file__).parent / "tools" / "hbone_probe.py")


@pytest.mark.parametrize("cert", ["none", "selfsigned"])
def test_tls_client_without_mesh_cert_cannot_use_hbone(cluster: Cluster, cert: str) -> None:
    server_ip = cluster.ip("server-1")
    out = cluster.exec("outsider", sys.executable, PROBE, server_ip, "--target",
                       f"{server_ip}:8080", "--cert", cert).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] != 200, result
    assert result["status"] is None, f"the server answered an unauthenticated CONNECT: {result}"
    assert result["error"], result
    # the refusal is counted on the destination node
    metrics = cluster.node_get("node-2", "http://10.77.0.12:15020/metrics")
    assert "nodemesh_ztunnel_hbone_refusals_total{" in metrics, metrics


def csr_for(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def post_csr(cluster: Cluster, node: str, identity: str) -> tuple[int, dict[str, object]]:
    node_dir = cluster.state_dir / "nodes" / node
    ctx = ssl.create_default_context(cafile=str(node_dir / "root-cert.pem"))
    ctx.check_hostname = False
    req = urllib.request.Request(
        "https://10.77.0.1:15012/v1/csr", method="POST",
        data=json.dumps({"csr": csr_for(identity)}).encode(),
        headers={"Authorization": f"Bearer {(node_dir / 'token').read_text().strip()}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


def test_node_cannot_get_certificate_for_service_account_only_on_other_node(
        cluster: Cluster) -> None:
    outsider_id = "spiffe://cluster.local/ns/legacy/sa/default"  # its only pod is on node-2
    status, body = post_csr(cluster, "node-1", outsider_id)
    assert status == 403, body
    assert "node-1" in str(body.get("error")), body
    status, body = post_csr(cluster, "node-2", outsider_id)
    assert status == 200, body
    assert body["certChain"]


def test_bad_node_token_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    node_dir = cluster.state_dir / "nodes" / "node-1"
    ctx = ssl.create_default_context(cafile=str(node_dir / "root-cert.pem"))
    ctx.check_hostname = False
    req = urllib.request.Request(
        "https://10.77.0.1:15012/v1/csr", method="POST",
        data=json.dumps({"csr": csr_for("spiffe://cluster.local/ns/default/sa/client")}).encode(),
        headers={"Authorization": "Bearer not-a-token"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, context=ctx, timeout=10)
    with info.value:
        assert info.value.code == 401
