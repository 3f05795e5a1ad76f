"""HBONE loopback microbenchmark: one stream's throughput (MB/s) and streams opened per second on
a pooled connection, client and server in one uvloop process over 127.0.0.1 with real mTLS.

    .venv/bin/python -m bench.hbone_loopback [--mib 512] [--streams 2000]

Prints numbers; nothing asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import socket
import time

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshapi.csr import CsrResponse
from meshapi.ids import SpiffeId
from ztunnel.certs import CertificateStore
from ztunnel.hbone import Accept, ConnectRequest, HbonePool, HboneServer, Reject

TD = "cluster.local"
CLIENT = SpiffeId.parse("spiffe://cluster.local/ns/bench/sa/client")
SERVER = SpiffeId.parse("spiffe://cluster.local/ns/bench/sa/server")


class BenchCA:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    async def sign(self, csr_pem: str) -> CsrResponse:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        now = dt.datetime.now(dt.UTC)
        pub = csr.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        leaf = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
            .public_key(pub).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(san.value, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
        return CsrResponse((pem(leaf),), pem(self.cert), leaf.not_valid_after_utc.isoformat())


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.n = 0
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.n += len(data)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(self.n)
        return False


class Source(asyncio.Protocol):
    def __init__(self) -> None:
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


async def main(mib: int, streams: int) -> None:
    loop = asyncio.get_running_loop()
    ca = BenchCA()
    store = CertificateStore(ca, TD)
    server_cert = await store.acquire(SERVER)
    sinks: list[Sink] = []

    async def handler(req: ConnectRequest) -> Accept | Reject:
        def factory(t: asyncio.Transport) -> asyncio.Protocol:
            s = Sink()
            sinks.append(s)
            return s
        return Accept(factory)

    server = HboneServer(context=server_cert.server_context, trust_domain=TD, handler=handler)
    listener = await loop.create_server(server.protocol_factory, "127.0.0.1", 0)
    addr = listener.sockets[0].getsockname()[:2]
    pool = HbonePool(store, max_streams_per_connection=1000)

    async def connect_socket(peer: tuple[str, int]) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, peer)
        return s

    async def open_one(proto: asyncio.Protocol) -> asyncio.Transport:
        return await pool.open_stream(src=CLIENT, dst=SERVER, peer=addr, authority="10.0.0.1:80",
                                      connect_socket=connect_socket, protocol=proto)

    # throughput of one stream
    src = Source()
    t = await open_one(src)
    chunk = b"\0" * (256 * 1024)
    total = mib * 1024 * 1024
    start = time.perf_counter()
    sent = 0
    while sent < total:
        await src.can_write.wait()
        t.write(chunk)
        sent += len(chunk)
    t.write_eof()
    got = await sinks[-1].done
    elapsed = time.perf_counter() - start
    print(f"single stream: {got / elapsed / 1e6:.0f} MB/s "
          f"({got * 8 / elapsed / 1e9:.2f} Gbit/s, {mib} MiB in {elapsed:.2f}s)")
    t.close()

    # streams opened per second on the pooled connection (sequential open + close)
    start = time.perf_counter()
    for _ in range(streams):
        s = await open_one(asyncio.Protocol())
        s.close()
    elapsed = time.perf_counter() - start
    print(f"pooled stream open (sequential): {streams / elapsed:.0f} streams/s")

    # concurrent bursts of 100
    start = time.perf_counter()
    for _ in range(streams // 100):
        opened = await asyncio.gather(*(open_one(asyncio.Protocol()) for _ in range(100)))
        for s in opened:
            s.close()
    elapsed = time.perf_counter() - start
    print(f"pooled stream open (bursts of 100): {(streams // 100) * 100 / elapsed:.0f} streams/s, "
          f"{pool.connection_count()} connection(s)")

    await pool.close()
    await server.close()
    listener.close()
    await listener.wait_closed()
    store.release(SERVER)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--streams", type=int, default=2000)
    a = ap.parse_args()
    uvloop.run(main(a.mib, a.streams))
