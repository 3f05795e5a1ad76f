from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from meshapi.ids import SpiffeId
from tests.unit.ztunnel.hbone.testca import TestCA
from ztunnel.certs import CertificateStore, CertInfo, ControllerCertFetcher, make_csr
from ztunnel.errors import CertError

ALICE = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/alice")


async def poll(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def test_csr_has_exactly_one_uri_san() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    csr = x509.load_pem_x509_csr(make_csr(ALICE, ec.generate_private_key(ec.SECP256R1())).encode())
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ALICE)]
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)


async def test_acquire_dedups_and_refcounts() -> None:
    ca = TestCA()
    store = CertificateStore(ca, "cluster.local")
    certs = await asyncio.gather(*(store.acquire(ALICE) for _ in range(5)))
    assert ca.signed == 1
    assert all(c is certs[0] for c in certs)
    cert = certs[0]
    assert cert.server_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert cert.server_context.verify_mode == ssl.CERT_REQUIRED
    assert cert.server_context.num_tickets == 0  # no session tickets: the pool never resumes
    assert cert.client_context.verify_mode == ssl.CERT_REQUIRED
    assert not cert.client_context.check_hostname
    assert store.infos()[0].identity == ALICE
    for _ in range(4):
        store.release(ALICE)
    assert store.get(ALICE) is cert
    store.release(ALICE)
    assert store.get(ALICE) is None


async def test_acquire_failure_is_wrapped_and_not_kept() -> None:
    ca = TestCA()
    ca.fail_next = 1
    store = CertificateStore(ca, "cluster.local")
    with pytest.raises(CertError):
        await store.acquire(ALICE)
    assert store.get(ALICE) is None
    assert (await store.acquire(ALICE)).identity == ALICE
    store.release(ALICE)


async def test_foreign_trust_domain_refused() -> None:
    store = CertificateStore(TestCA(), "cluster.local")
    with pytest.raises(CertError, match="trust domain"):
        await store.acquire(SpiffeId.parse("spiffe://other/ns/a/sa/b"))


async def test_renewal_reloads_same_contexts_and_retries() -> None:
    ca = TestCA(ttl=2.0)
    store = CertificateStore(ca, "cluster.local", renew_fraction=0.5)
    cert = await store.acquire(ALICE)
    ctx = cert.server_context
    first = cert.info.serial
    ca.fail_next = 1  # first renewal attempt fails: old cert stays, retried with backoff
    task = asyncio.create_task(store.run())
    try:
        await poll(lambda: cert.info.serial != first, timeout=15)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert store.get(ALICE) is cert and cert.server_context is ctx
    assert ca.signed >= 2
    store.release(ALICE)


async def test_controller_fetcher_errors_say_what_to_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fetcher = ControllerCertFetcher("127.0.0.1:1", tmp_path / "root.pem", tmp_path / "token")
    with pytest.raises(CertError, match="node token"):
        await fetcher.sign("x")
    (tmp_path / "token").write_text("t")
    (tmp_path / "root.pem").write_text(TestCA().root_pem)
    with pytest.raises(CertError, match="controller"):
        await fetcher.sign("x")


def test_renewal_time_counts_from_arrival_not_from_a_backdated_not_before() -> None:
    store = CertificateStore(TestCA(), "cluster.local", renew_fraction=0.5)
    now = datetime.now(UTC)
    ident = SpiffeId("cluster.local", "default", "web")
    # a 40 s certificate whose issuer backdated not_before by 60 s (clock-skew allowance): its
    # half-life from not_before is already past; from arrival it is 20 s ahead
    info = CertInfo(ident, 1, now - timedelta(seconds=60), now + timedelta(seconds=40))
    at = store._renew_time(info)
    assert timedelta(seconds=19) <= at - now <= timedelta(seconds=21)
    # a day-long certificate: renewed after about half a day, as before
    info = CertInfo(ident, 2, now - timedelta(seconds=60), now + timedelta(days=1))
    assert abs((store._renew_time(info) - now) - timedelta(hours=12)) < timedelta(seconds=5)


async def test_released_certificate_is_kept_a_while_for_a_retry() -> None:
    ca = TestCA()
    store = CertificateStore(ca, "cluster.local", idle_keep=0.3)
    first = await store.acquire(ALICE)
    store.release(ALICE)
    assert store.get(ALICE) is None and store.infos() == []  # not served while idle
    # the agent retries the pod add: the same certificate, no new signature
    assert await store.acquire(ALICE) is first
    assert ca.signed == 1
    store.release(ALICE)
    runner = asyncio.create_task(store.run())
    try:
        await asyncio.sleep(0.5)  # past idle_keep: run() dropped it
        assert store._entries == {}
        assert await store.acquire(ALICE) is not first
        assert ca.signed == 2
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_idle_keep_zero_drops_at_once() -> None:
    ca = TestCA()
    store = CertificateStore(ca, "cluster.local", idle_keep=0)
    await store.acquire(ALICE)
    store.release(ALICE)
    await store.acquire(ALICE)
    assert ca.signed == 2
    with pytest.raises(ValueError, match="idle_keep"):
        CertificateStore(ca, "cluster.local", idle_keep=-1)
