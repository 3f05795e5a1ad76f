"""Workload certificates: keys, CSRs, the controller client, and the live SSL contexts.

Invariants:

* A workload's private key is generated in this process, handed to OpenSSL through a 0600
  file in a tmpfs directory, encrypted with a one-time password, deleted right after loading,
  and never stored in a Python attribute, logged or sent anywhere.
* Each identity has one ``WorkloadCert`` whose two ``SSLContext`` objects live as long as the
  identity is acquired. Renewal loads the new key and chain *into the same contexts*, so
  listeners and pools that hold them see new handshakes use the new certificate while
  established connections are untouched.
* A failed renewal keeps the current certificate in service until it expires, retrying with
  exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import ssl
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshapi.constants import HBONE_ALPN
from meshapi.csr import CsrResponse
from meshapi.errors import WireError
from meshapi.ids import SpiffeId
from ztunnel.errors import CertError, TlsIdentityError
from ztunnel.tls import cert_identity

log = logging.getLogger(__name__)

#: tmpfs directories tried in order for the short-lived key file (memory, never a disk).
_TMPFS_DIRS = ("/dev/shm", "/run")  # noqa: S108 - private 0600 files via mkstemp
_RETRY_BASE = 1.0
_RETRY_CAP = 60.0
_MIN_RENEW_INTERVAL = 0.5


@dataclass(frozen=True)
class CertInfo:
    identity: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime


class CertFetcher(Protocol):
    async def sign(self, csr_pem: str) -> CsrResponse:
        """Have the CA sign ``csr_pem``; raises CertError."""
        ...


class ControllerCertFetcher:
    """``POST https://<controller>/v1/csr`` with the node's bearer token, TLS verified against
    the mesh CA root."""

    def __init__(
        self, controller: str, ca_root_file: Path, token_file: Path, timeout: float = 10.0
    ) -> None:
        self._url = f"https://{controller}/v1/csr"
        self._ca_root_file = ca_root_file
        self._token_file = token_file
        self._timeout = timeout

    async def sign(self, csr_pem: str) -> CsrResponse:
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:
            raise CertError(
                f"cannot read the node token {self._token_file}: {exc}; is the node credential "
                "mounted?"
            ) from exc
        try:
            ctx = ssl.create_default_context(cafile=str(self._ca_root_file))
        except (OSError, ssl.SSLError) as exc:
            raise CertError(
                f"cannot load the mesh CA root {self._ca_root_file}: {exc}; is it a PEM file?"
            ) from exc
        ctx.check_hostname = False  # the controller is addressed by IP; the CA root pins it
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as s,
                s.post(
                    self._url,
                    json={"csr": csr_pem},
                    headers={"Authorization": f"Bearer {token}"},
                    ssl=ctx,
                ) as resp,
            ):
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    detail = body.get("error") if isinstance(body, dict) else body
                    raise CertError(
                        f"controller {self._url} refused the CSR with {resp.status}: {detail}"
                        + (
                            "; is the node token valid?"
                            if resp.status == 401
                            else "; is a pod with this service account scheduled on this node?"
                            if resp.status == 403
                            else ""
                        )
                    )
                return CsrResponse.from_wire(body)
        except TimeoutError as exc:
            raise CertError(
                f"CSR request to {self._url} timed out after {self._timeout}s; "
                "is the controller reachable on its API port?"
            ) from exc
        except aiohttp.ClientError as exc:
            raise CertError(
                f"CSR request to {self._url} failed: {exc}; is the controller running and is "
                f"{self._ca_root_file} its CA root?"
            ) from exc
        except (ValueError, WireError) as exc:
            raise CertError(f"controller {self._url} sent a malformed CSR answer: {exc}") from exc


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(identity: SpiffeId, key: ec.EllipticCurvePrivateKey) -> str:
    """A PEM PKCS#10 request with exactly one URI SAN, ``identity``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _base_context(server_side: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([HBONE_ALPN])
    # Identity is the SPIFFE URI SAN, checked by ztunnel.tls after the handshake.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server_side:
        # the pool keeps connections open and never resumes a session: the two TLS 1.3 session
        # tickets OpenSSL mints by default per handshake would be work and bytes for nothing
        ctx.num_tickets = 0
    return ctx


def _tmpfs_dir() -> str | None:
    for d in _TMPFS_DIRS:
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return None


def _load_into(
    contexts: tuple[ssl.SSLContext, ...],
    key: ec.EllipticCurvePrivateKey,
    chain_pem: tuple[str, ...],
    root_pem: str,
) -> None:
    password = secrets.token_bytes(32)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    fd, path = tempfile.mkstemp(prefix="nodemesh-", suffix=".pem", dir=_tmpfs_dir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
            for pem in chain_pem:
                f.write(pem.encode() if pem.endswith("\n") else (pem + "\n").encode())
        for ctx in contexts:
            ctx.load_cert_chain(path, password=password)
            ctx.load_verify_locations(cadata=root_pem)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CertError(f"cannot load the signed certificate into TLS contexts: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class WorkloadCert:
    """One identity's current key and chain. The contexts are live objects: renewal reloads
    them in place."""

    def __init__(self, identity: SpiffeId, info: CertInfo) -> None:
        self.identity = identity
        self.server_context = _base_context(server_side=True)
        self.client_context = _base_context(server_side=False)
        self.info = info


async def _issue(fetcher: CertFetcher, identity: SpiffeId) -> tuple[
    ec.EllipticCurvePrivateKey, CsrResponse, CertInfo
]:
    key = _new_key()
    resp = await fetcher.sign(make_csr(identity, key))
    try:
        leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
        x509.load_pem_x509_certificate(resp.root.encode())
    except ValueError as exc:
        raise CertError(f"CA answered with a certificate that cannot be parsed: {exc}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise CertError(f"CA returned a certificate for another key when asked for {identity}")
    try:
        got = cert_identity(leaf)
    except TlsIdentityError as exc:
        raise CertError(f"CA returned an unusable certificate for {identity}: {exc}") from exc
    if got != identity:
        raise CertError(f"CA returned a certificate for {got} when asked for {identity}")
    info = CertInfo(
        identity, leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc
    )
    return key, resp, info


class _Entry:
    def __init__(self) -> None:
        self.refs = 0
        self.cert: WorkloadCert | None = None
        self.lock = asyncio.Lock()
        self.renew_at: datetime | None = None
        self.failures = 0
        #: monotonic time the last user released it (None while in use)
        self.idle_since: float | None = None


class CertificateStore:
    """Workload certificates by identity, refcounted by their users, renewed by ``run()``.

    A certificate nobody uses any more is kept (not renewed, not served: ``get`` and ``infos``
    do not show it) for ``idle_keep`` seconds or until its renewal time, whichever is first, so
    that a pod add the agent retries every few seconds (its listeners could not be opened yet)
    or a pod that comes right back does not cost the controller a new signature each time.
    """

    def __init__(
        self,
        fetcher: CertFetcher,
        trust_domain: str,
        renew_fraction: float = 0.5,
        idle_keep: float = 60.0,
    ) -> None:
        if not 0.0 < renew_fraction < 1.0:
            raise ValueError("renew_fraction must be between 0 and 1")
        if idle_keep < 0:
            raise ValueError("idle_keep must not be negative")
        self._fetcher = fetcher
        self._trust_domain = trust_domain
        self._fraction = renew_fraction
        self._idle_keep = idle_keep
        self._entries: dict[SpiffeId, _Entry] = {}
        self._changed = asyncio.Event()

    def _renew_time(self, info: CertInfo) -> datetime:
        """Called when the certificate arrives: the fraction is of the lifetime left from now.
        Issuers backdate ``not_before`` to absorb clock skew (ours by 60 s); counting from it
        would put the half-life of a short-lived certificate in the past."""
        now = datetime.now(UTC)
        start = min(max(info.not_before, now), info.not_after)
        at = start + (info.not_after - start) * self._fraction
        # never a hot loop, even for certificates whose renewal time is already past
        return max(at, now + _seconds(_MIN_RENEW_INTERVAL))

    async def acquire(self, identity: SpiffeId) -> WorkloadCert:
        """The identity's certificate, fetched once however many callers wait; refcount +1."""
        if identity.trust_domain != self._trust_domain:
            raise CertError(
                f"{identity} is not in this mesh's trust domain {self._trust_domain!r}"
            )
        entry = self._entries.get(identity)
        if entry is not None and entry.idle_since is not None and self._stale(entry):
            del self._entries[identity]
            entry = None
        if entry is None:
            entry = self._entries[identity] = _Entry()
        entry.refs += 1
        entry.idle_since = None
        try:
            async with entry.lock:
                if entry.cert is None:
                    key, resp, info = await _issue(self._fetcher, identity)
                    cert = WorkloadCert(identity, info)
                    _load_into(
                        (cert.server_context, cert.client_context), key, resp.cert_chain, resp.root
                    )
                    del key
                    entry.cert = cert
                    entry.renew_at = self._renew_time(info)
                    self._changed.set()
                    log.info("workload certificate for %s issued, serial %x, expires %s",
                             identity, info.serial, info.not_after.isoformat())
                return entry.cert
        except BaseException:
            self.release(identity)
            raise

    def release(self, identity: SpiffeId) -> None:
        entry = self._entries.get(identity)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            if entry.cert is None or self._idle_keep == 0:
                del self._entries[identity]
            else:
                entry.idle_since = time.monotonic()
            self._changed.set()

    def _stale(self, entry: _Entry) -> bool:
        """An idle entry past its keep time or its renewal time (it is never renewed idle)."""
        assert entry.idle_since is not None
        return time.monotonic() - entry.idle_since >= self._idle_keep or (
            entry.renew_at is not None and entry.renew_at <= datetime.now(UTC)
        )

    def get(self, identity: SpiffeId) -> WorkloadCert | None:
        entry = self._entries.get(identity)
        return entry.cert if entry is not None and entry.idle_since is None else None

    def infos(self) -> list[CertInfo]:
        return [
            e.cert.info for e in self._entries.values()
            if e.cert is not None and e.idle_since is None
        ]

    async def _renew(self, identity: SpiffeId, entry: _Entry) -> None:
        cert = entry.cert
        assert cert is not None
        try:
            key, resp, info = await _issue(self._fetcher, identity)
            _load_into((cert.server_context, cert.client_context), key, resp.cert_chain, resp.root)
            del key
        except CertError as exc:
            entry.failures += 1
            delay = min(_RETRY_CAP, _RETRY_BASE * 2 ** (entry.failures - 1))
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
            now = datetime.now(UTC)
            expired = now >= cert.info.not_after
            log.warning(
                "renewing the certificate of %s failed (attempt %d): %s; %s, retrying in %.1fs",
                identity, entry.failures, exc,
                "the current one HAS EXPIRED" if expired
                else f"keeping the current one until {cert.info.not_after.isoformat()}",
                delay,
            )
            entry.renew_at = now + _seconds(delay)
            return
        entry.failures = 0
        cert.info = info
        entry.renew_at = self._renew_time(info)
        log.info("workload certificate for %s renewed, serial %x, expires %s",
                 identity, info.serial, info.not_after.isoformat())

    async def run(self) -> None:
        """Renew every certificate at its renewal time until cancelled."""
        while True:
            self._changed.clear()
            for ident, e in list(self._entries.items()):
                if e.idle_since is not None and self._stale(e):
                    del self._entries[ident]
            now = datetime.now(UTC)
            due = [
                (ident, e) for ident, e in self._entries.items()
                if e.cert is not None and e.renew_at is not None and e.renew_at <= now
                and e.idle_since is None
            ]
            for ident, entry in due:
                async with entry.lock:
                    if self._entries.get(ident) is entry:
                        await self._renew(ident, entry)
            if due:
                await asyncio.sleep(0)
                continue
            waits = [
                (e.renew_at - now).total_seconds()
                for e in self._entries.values() if e.renew_at is not None
            ]
            waits += [
                self._idle_keep - (time.monotonic() - e.idle_since)
                for e in self._entries.values() if e.idle_since is not None
            ]
            timeout = max(0.0, min(waits)) if waits else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
