"""The sidecar column: what a user would pick instead of nodemesh, one HAProxy per pod.

Each pod gets its own HAProxy (Debian's 2.6) in its network namespace and cgroup, one thread,
256 KiB buffers, mutual TLS 1.3 with ECDSA P-256 certificates from a throwaway CA (both sides
verify the peer; the client also checks the server's name). The hop is the mesh's: the client
pod's outbound TCP to the server is captured by iptables ``REDIRECT`` inside the client pod's
netns to its sidecar's local port; the client sidecar connects with TLS to the server pod's
sidecar on a port of its own, which terminates TLS and connects to the app on 127.0.0.1.

Why capture by owner: HAProxy's ``set-mark`` marks the packets it sends to its *client*, not the
connections it opens to a server, so a mark cannot exempt the sidecar's own outbound
connections; they are created after HAProxy drops to the ``haproxy`` user, so
``-m owner --uid-owner haproxy -j RETURN`` exempts exactly them (as Istio exempts its proxy's
uid 1337).

Sidecars route statically: one local port per app port (8080 HTTP, 5201 iperf3) on the client,
one TLS port per app port on the server (a sidecar mesh would learn these from its control
plane; the benchmark only talks to ``server-1``). Ports are in 15000-15100, which the benchmark
reserves in both pods for the mesh, so no ephemeral port can take them.

Invariants: every process, chain and file this module creates is named ``nm-bench-sidecar*`` /
``NM-BENCH-SIDECAR`` and :meth:`Sidecars.close` removes them all by name and pid, also after a
failure (it is a context manager). The config builders and the certificate maker are pure.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.common import joiner, run

HAPROXY = "haproxy"
#: the uid/gid HAProxy runs as after binding (Debian's haproxy package creates them)
SIDECAR_USER = "haproxy"
CHAIN = "NM-BENCH-SIDECAR"
PREFIX = "nm-bench-sidecar"
SERVER_NAME = "server.nm-bench.local"
CLIENT_NAME = "client.nm-bench.local"
#: app port -> (client sidecar's local capture port, server sidecar's TLS port)
PORTS: dict[int, tuple[int, int]] = {8080: (15041, 15051), 5201: (15042, 15052)}
BUFSIZE = 262144
#: file descriptors HAProxy keeps for itself beyond two per proxied connection
FD_RESERVE = 100


def max_connections(fd_limit: int | None = None) -> int:
    """The most connections one sidecar can proxy: two descriptors each (client and server
    side) within the hard ``RLIMIT_NOFILE`` (20 000 on these machines, and HAProxy refuses to
    start when ``maxconn`` needs more). The same ``maxconn`` on every sidecar."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return max(1, (fd_limit - FD_RESERVE) // 2)


# --- certificates (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca_pem: bytes
    #: certificate + key in one PEM, as HAProxy's ``crt`` wants
    server_pem: bytes
    client_pem: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(now: datetime.datetime | None = None) -> Certs:
    """A throwaway CA and two ECDSA P-256 leaf certificates (server and client), valid a day."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("nm-bench sidecar CA"))
        .issuer_name(_name("nm-bench sidecar CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    return Certs(ca.public_bytes(serialization.Encoding.PEM),
                 leaf(SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH),
                 leaf(CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH))


# --- HAProxy configuration (pure) -------------------------------------------------------------


def _global(pid_file: str, maxconn: int) -> list[str]:
    return [
        "global",
        "    nbthread 1",
        f"    tune.bufsize {BUFSIZE}",
        f"    maxconn {maxconn}",
        f"    user {SIDECAR_USER}",
        f"    group {SIDECAR_USER}",
        f"    pidfile {pid_file}",
        "    ssl-default-bind-options ssl-min-ver TLSv1.3",
        "    ssl-default-server-options ssl-min-ver TLSv1.3",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        f"    maxconn {maxconn}",
        "",
    ]


def client_config(server_ip: str, certs_dir: str, pid_file: str, maxconn: int) -> str:
    """The client pod's sidecar: each captured app port's local listener → TLS to the server
    pod's sidecar, presenting the client certificate and verifying the server's."""
    ip = ipaddress.IPv4Address(server_ip)
    lines = _global(pid_file, maxconn)
    for app_port, (local, tls) in sorted(PORTS.items()):
        lines += [
            f"listen outbound_{app_port}",
            f"    bind 127.0.0.1:{local}",
            f"    server {SERVER_NAME} {ip}:{tls} ssl crt {certs_dir}/client.pem "
            f"ca-file {certs_dir}/ca.pem verify required verifyhost {SERVER_NAME} "
            f"sni str({SERVER_NAME})",
            "",
        ]
    return "\n".join(lines)


def server_config(pod_ip: str, certs_dir: str, pid_file: str, maxconn: int) -> str:
    """The server pod's sidecar: each TLS port terminates mTLS (client certificate required and
    verified against the CA) and connects to the app's port on 127.0.0.1."""
    ip = ipaddress.IPv4Address(pod_ip)
    lines = _global(pid_file, maxconn)
    for app_port, (_local, tls) in sorted(PORTS.items()):
        lines += [
            f"listen inbound_{app_port}",
            f"    bind {ip}:{tls} ssl crt {certs_dir}/server.pem ca-file {certs_dir}/ca.pem "
            "verify required",
            f"    server app 127.0.0.1:{app_port}",
            "",
        ]
    return "\n".join(lines)


def capture_rules(server_ip: str) -> list[list[str]]:
    """iptables (legacy, as the mesh's iptables mode) arguments that send the client pod's
    outbound TCP to the server's app ports to its sidecar, except the sidecar's own."""
    ip = str(ipaddress.IPv4Address(server_ip))
    rules = [
        ["-t", "nat", "-N", CHAIN],
        ["-t", "nat", "-A", CHAIN, "-m", "owner", "--uid-owner", SIDECAR_USER, "-j", "RETURN"],
    ]
    for app_port, (local, _tls) in sorted(PORTS.items()):
        rules.append(["-t", "nat", "-A", CHAIN, "-p", "tcp", "-d", ip, "--dport", str(app_port),
                      "-j", "REDIRECT", "--to-ports", str(local)])
    rules.append(["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", CHAIN])
    return rules


def cleanup_rules() -> list[list[str]]:
    """Remove what :func:`capture_rules` added, by name (each may fail when it is not there)."""
    return [["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", CHAIN],
            ["-t", "nat", "-F", CHAIN], ["-t", "nat", "-X", CHAIN]]


# --- running them -----------------------------------------------------------------------------


def iptables_binary() -> str:
    return shutil.which("iptables-legacy") or "iptables"


@dataclass
class Sidecar:
    pod: str
    pid_file: Path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return pid if comm == HAPROXY else None


class Sidecars:
    """Sidecars started in pods, their capture rules and their files; ``close`` removes all."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
        certs = make_certs()
        (self.dir / "ca.pem").write_bytes(certs.ca_pem)
        for name, pem in (("server.pem", certs.server_pem), ("client.pem", certs.client_pem)):
            (self.dir / name).write_bytes(pem)
            os.chmod(self.dir / name, 0o640)
        shutil.chown(self.dir, group=SIDECAR_USER)  # HAProxy reads nothing after start, but
        self.dir.chmod(0o750)                        # keep the keys from the world anyway
        self.maxconn = max_connections()
        self.sidecars: dict[str, Sidecar] = {}
        self.captured: list[str] = []  # netns paths with our chain

    def __enter__(self) -> Sidecars:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _start(self, pod: str, netns: str, cgroup: str, config: str) -> Sidecar:
        safe = pod.replace("/", "_")
        cfg = self.dir / f"{PREFIX}-{safe}.cfg"
        sidecar = Sidecar(pod, self.dir / f"{PREFIX}-{safe}.pid")
        cfg.write_text(config)
        run([HAPROXY, "-c", "-q", "-f", str(cfg)], timeout=30)
        self.sidecars[pod] = sidecar
        # -D: daemon; the forked HAProxy stays in the pod's netns and cgroup we joined
        run([HAPROXY, "-D", "-f", str(cfg)], timeout=30, preexec=joiner(netns, cgroup))
        deadline = time.monotonic() + 10
        while sidecar.pid() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy for {pod} did not write {sidecar.pid_file}")
            time.sleep(0.01)
        return sidecar

    def start_server(self, pod: str, pod_ip: str, netns: str, cgroup: str) -> Sidecar:
        safe = pod.replace("/", "_")
        return self._start(pod, netns, cgroup, server_config(
            pod_ip, str(self.dir), str(self.dir / f"{PREFIX}-{safe}.pid"), self.maxconn))

    def start_client(self, pod: str, server_ip: str, netns: str, cgroup: str) -> Sidecar:
        safe = pod.replace("/", "_")
        sidecar = self._start(pod, netns, cgroup, client_config(
            server_ip, str(self.dir), str(self.dir / f"{PREFIX}-{safe}.pid"), self.maxconn))
        self.captured.append(netns)
        ipt = iptables_binary()
        for rule in capture_rules(server_ip):
            run([ipt, "-w", *rule], timeout=30, preexec=joiner(netns))
        return sidecar

    def pids(self) -> dict[str, int]:
        return {pod: pid for pod, s in self.sidecars.items() if (pid := s.pid()) is not None}

    def close(self) -> None:
        ipt = iptables_binary()
        for netns in self.captured:
            for rule in cleanup_rules():
                try:
                    run([ipt, "-w", *rule], timeout=30, check=False, preexec=joiner(netns))
                except (OSError, subprocess.SubprocessError) as exc:  # the netns may be gone
                    print(f"  sidecar cleanup in {netns}: {exc}", file=sys.stderr)
        self.captured.clear()
        pids = self.pids()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while any(s.pid() is not None for s in self.sidecars.values()):
            if time.monotonic() > deadline:
                for s in self.sidecars.values():
                    if (left := s.pid()) is not None:
                        os.kill(left, signal.SIGKILL)
                break
            time.sleep(0.02)
        self.sidecars.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
