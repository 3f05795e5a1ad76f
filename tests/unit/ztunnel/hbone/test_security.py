from __future__ import annotations

import asyncio
import contextlib
import ssl

import h2.config
import h2.connection
import h2.events
import pytest

from meshapi.ids import SpiffeId
from tests.unit.ztunnel.hbone.harness import CLIENT, Harness, poll
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.errors import HboneIdentityError, HboneStatusError
from ztunnel.hbone import ConnectRequest, Reject

OTHER_TD = SpiffeId.parse("spiffe://other.mesh/ns/default/sa/client")


async def _tls_attempt(h: Harness, ctx: ssl.SSLContext) -> None:
    """Connect with ``ctx``, send a preface, and read until the server closes."""
    with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
        reader, writer = await asyncio.open_connection(*h.addr, ssl=ctx)
        try:
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            await asyncio.wait_for(reader.read(65536), 5)
            await asyncio.wait_for(reader.read(65536), 5)
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
                await writer.wait_closed()


async def _assert_still_serves(h: Harness) -> None:
    t, p = await h.open()
    t.write(b"ping")
    await poll(lambda: bytes(p.data) == b"ping", what="good client still served")
    t.abort()


async def test_server_identity_mismatch(ca: TestCA) -> None:
    async with Harness(ca) as h:
        with pytest.raises(HboneIdentityError, match="expected"):
            await h.open(dst=SpiffeId.parse("spiffe://cluster.local/ns/default/sa/someone"))
        assert h.pool.connection_count() == 0


@pytest.mark.parametrize(
    ("make_ctx", "reason"),
    [
        (lambda ca: ca.client_context(None), "no_client_cert"),
        (lambda ca: ca.client_context(CLIENT, self_signed=True), "bad_cert_chain"),
        (lambda ca: TestCA("other mesh").client_context(OTHER_TD, trust=ca.root_pem),
         "bad_cert_chain"),
        (lambda ca: ca.client_context(OTHER_TD), "identity"),
        (lambda ca: ca.client_context("spiffe://cluster.local/not-a-workload"), "identity"),
    ],
    ids=["no-cert", "self-signed", "other-ca", "other-trust-domain", "non-workload-uri"],
)
async def test_bad_client_refused_and_counted(ca: TestCA, make_ctx, reason) -> None:  # type: ignore[no-untyped-def]
    async with Harness(ca) as h:
        await _tls_attempt(h, make_ctx(ca))
        await poll(lambda: h.events.counts[reason] == 1, what=f"refusal {reason} counted")
        assert not h.requests
        await _assert_still_serves(h)


async def test_plain_bytes_refused_and_server_keeps_serving(ca: TestCA) -> None:
    async with Harness(ca) as h:
        reader, writer = await asyncio.open_connection(*h.addr)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        await poll(lambda: h.events.counts["not_tls"] == 1, what="not_tls counted")
        # TLS junk after a valid-looking record header is a handshake failure
        reader, writer = await asyncio.open_connection(*h.addr)
        writer.write(b"\x16\x03\x01\x00\x05garbagegarbage")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        await poll(lambda: h.events.counts["tls_handshake"] == 1, what="tls_handshake counted")
        await _assert_still_serves(h)


async def _raw_request(h: Harness, headers: list[tuple[str, str]]) -> int:
    """Send one request with h2 directly (no validation) and return the status."""
    ctx = h.ca.client_context(CLIENT)
    reader, writer = await asyncio.open_connection(*h.addr, ssl=ctx)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                  normalize_outbound_headers=False)
    )
    conn.initiate_connection()
    conn.send_headers(1, headers)
    writer.write(conn.data_to_send())
    status = 0
    try:
        async with asyncio.timeout(5):
            while not status:
                data = await reader.read(65536)
                assert data, "server closed without answering"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = int(dict(ev.headers)[b":status"])
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    return status


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "1.2.3.4:80")],
        [(":method", "CONNECT")],
        [(":method", "CONNECT"), (":authority", "example.com:80")],
        [(":method", "CONNECT"), (":authority", "1.2.3.4:0")],
        [(":method", "CONNECT"), (":authority", "1.2.3.4:65536")],
        [(":method", "CONNECT"), (":authority", "1.2.3.4")],
        [(":method", "CONNECT"), (":authority", "1.2.3.4:80"), (":path", "/")],
    ],
    ids=["GET", "no-authority", "hostname", "port-0", "port-big", "no-port", "with-path"],
)
async def test_malformed_connect_gets_400(ca: TestCA, headers: list[tuple[str, str]]) -> None:
    async with Harness(ca) as h:
        assert await _raw_request(h, headers) == 400
        assert h.events.counts["bad_request"] == 1 and not h.requests
        await _assert_still_serves(h)


@pytest.mark.parametrize("status", [401, 503])
async def test_reject_surfaces_as_status_error(ca: TestCA, status: int) -> None:
    async def reject(req: ConnectRequest) -> Reject:
        return Reject(status, "no")

    async with Harness(ca, handler=reject) as h:
        with pytest.raises(HboneStatusError) as info:
            await h.open()
        assert info.value.status == status
        # the connection stays pooled and usable for the next stream
        with pytest.raises(HboneStatusError):
            await h.open()
        assert h.connects == 1
