from __future__ import annotations

import asyncio
import contextlib

from cryptography import x509

from tests.unit.ztunnel.hbone.harness import CLIENT, Harness, poll
from tests.unit.ztunnel.hbone.testca import TestCA


async def _server_serial(h: Harness) -> int:
    _reader, writer = await asyncio.open_connection(*h.addr, ssl=h.ca.client_context(CLIENT))
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def test_renewal_swaps_cert_under_live_stream() -> None:
    ca = TestCA(ttl=3.0)
    async with Harness(ca) as h:
        renewer = asyncio.create_task(h.server_store.run())
        try:
            t, p = await h.open()
            t.write(b"before")
            await poll(lambda: bytes(p.data) == b"before", what="echo before renewal")
            first = h.server_cert.info.serial
            assert await _server_serial(h) == first
            await poll(lambda: h.server_cert.info.serial != first, timeout=10, what="renewal")
            assert h.server_store.get(h.server_cert.identity) is h.server_cert
            # the live stream is untouched
            t.write(b" after")
            await poll(lambda: bytes(p.data) == b"before after", what="echo after renewal")
            # new handshakes present the new certificate
            assert await _server_serial(h) == h.server_cert.info.serial
            t.write_eof()
            assert await asyncio.wait_for(p.lost, 5) is None
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
