"""The CSR endpoint's wire contract (the crypto lives in the controller and the ztunnel).

``POST /v1/csr`` on the controller API, TLS, ``Authorization: Bearer <node token>``, body
``{"csr": "<PEM PKCS#10>"}``. The CSR carries exactly one URI SAN, the SPIFFE identity asked for,
and an ECDSA P-256 key. Answer 200 ``{"certChain": ["<PEM leaf>", ...], "root": "<PEM>",
"notAfter": "<RFC 3339>"}``; 400 malformed CSR; 401 bad node credential; 403 identity not
allowed for this node. Errors answer ``{"error": "..."}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshapi import wire
from meshapi.errors import WireError

MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class CsrResponse:
    cert_chain: tuple[str, ...]
    root: str
    not_after: str

    def to_wire(self) -> dict[str, object]:
        return {"certChain": list(self.cert_chain), "root": self.root, "notAfter": self.not_after}

    @classmethod
    def from_wire(cls, value: object) -> CsrResponse:
        obj = wire.as_mapping(value, "")
        chain = wire.as_list(obj.get("certChain"), "certChain")
        if not chain or not all(isinstance(c, str) for c in chain):
            raise WireError("certChain", "expected a non-empty list of PEM strings")
        return cls(tuple(chain), wire.req_str(obj, "root", ""), wire.req_str(obj, "notAfter", ""))
