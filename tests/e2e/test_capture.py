"""On the client pod's interface, a mesh request is TLS 1.3 to port 15008 and carries no plaintext
of the request."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

from tests.e2e import pcap
from tests.e2e.conftest import Cluster, poll


def test_wire_shows_tls13_to_15008_and_no_plaintext(cluster: Cluster, tmp_path: Path) -> None:
    capture = tmp_path / "client.pcap"
    marker = f"secret-{uuid.uuid4().hex}"
    pods = cluster.pods()
    target = next(name for name, p in sorted(pods.items())
                  if name.startswith("app-") and p["node"] == "node-2")
    server_ip = str(pods[target]["ip"])
    env = {**os.environ, "NODEMESH_STATE_DIR": str(cluster.state_dir)}
    dump = subprocess.Popen(
        ["ip", "netns", "exec", "nm-pod-default-client", "tcpdump", "-i", "eth0", "-U", "-n",
         "-s", "0", "-w", str(capture), "tcp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        # tcpdump says "listening on eth0" once the capture is armed
        assert dump.stderr is not None
        line = dump.stderr.readline().decode()
        assert "listening on" in line, line
        # this destination is used by no other test, so the pooled HBONE connection to it is
        # opened now and the capture holds its handshake
        reply = cluster.curl("client", f"http://{server_ip}:8080/{marker}?{marker}",
                             "-H", f"X-Marker: {marker}")
        assert marker in reply.stdout or reply.stdout
        poll("capture to contain packets", lambda: capture.stat().st_size > 24)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
    segments = pcap.read(capture)
    payload = [s for s in segments if s.payload]
    assert payload, "no TCP payload captured"
    for seg in payload:
        assert 15008 in (seg.src[1], seg.dst[1]), f"payload outside HBONE: {seg.src}->{seg.dst}"
        assert marker.encode() not in seg.payload, "request visible in plaintext on the wire"
        assert b"GET /" not in seg.payload
    # every record on the wire is TLS: handshake (22), change cipher (20), alert (21) or data (23)
    to_server = [s for s in payload if s.dst[1] == 15008]
    assert all(s.payload[0] in (20, 21, 22, 23) for s in to_server)
    client_port = to_server[0].src[1]
    from_server = pcap.stream(
        [s for s in payload if s.dst[1] == client_port and s.src[0] == server_ip], 15008)
    assert pcap.server_hello_version(from_server) == 0x0304, "ServerHello did not pick TLS 1.3"
