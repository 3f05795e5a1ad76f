"""Where the CA comes from: the :class:`CaStore` protocol and the stores that need no Kubernetes.

* :class:`DirectoryCaStore`: the self-managed root in ``--state-dir``/ca (created on first start),
  or an operator-supplied ``--ca-cert/--ca-key[/--ca-chain]`` whose root is then published to
  ``--state-dir``/ca/root-cert.pem for the nodes (local mode; unchanged behaviour).
* :class:`FileCaStore`: operator-supplied files only, nothing written (Kubernetes mode, where
  the root is published in a ConfigMap instead).
* :class:`controller.kube.castore.SecretCaStore`: the root in a Kubernetes Secret.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from controller.ca import ROOT_CERT_FILE, ROOT_KEY_FILE, CertificateAuthority
from controller.errors import StartupError

log = logging.getLogger(__name__)


class CaStore(Protocol):
    async def load(self) -> CertificateAuthority:
        """The CA to sign with (created if the store creates one); CaError/StartupError if
        there is none to be had."""
        ...


class FileCaStore:
    def __init__(self, cert: Path, key: Path, chain: Path | None) -> None:
        self._cert, self._key, self._chain = cert, key, chain

    async def load(self) -> CertificateAuthority:
        ca = CertificateAuthority.from_files(self._cert, self._key, self._chain)
        log.info("event=ca_loaded operator_supplied=true cert=%s", self._cert)
        return ca


class DirectoryCaStore:
    def __init__(
        self, state_dir: Path, cert: Path | None, key: Path | None, chain: Path | None
    ) -> None:
        if (cert is None) != (key is None):
            raise StartupError("--ca-cert and --ca-key go together")
        self._ca_dir = state_dir / "ca"
        self._cert, self._key, self._chain = cert, key, chain

    async def load(self) -> CertificateAuthority:
        return self.load_now()

    def load_now(self) -> CertificateAuthority:
        if self._cert is None or self._key is None:
            return CertificateAuthority.load_or_create(self._ca_dir)
        ca = CertificateAuthority.from_files(self._cert, self._key, self._chain)
        # publish the trust anchor where nodes expect it (CONTRACTS.md), unless a self-managed
        # root lives there: its key must keep matching its certificate
        if (self._ca_dir / ROOT_KEY_FILE).exists():
            log.warning(
                "event=ca_root_not_published reason=%r dir=%s",
                "a self-managed root key exists there",
                self._ca_dir,
            )
        else:
            try:
                ca.write_root(self._ca_dir / ROOT_CERT_FILE)
            except OSError as exc:
                raise StartupError(f"cannot write {self._ca_dir / ROOT_CERT_FILE}: {exc}") from exc
        log.info("event=ca_loaded operator_supplied=true cert=%s", self._cert)
        return ca
