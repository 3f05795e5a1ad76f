"""Identifiers as types: SPIFFE identities, pod UIDs, node names, service keys.

``SpiffeId.parse(str(x)) == x`` for every valid ``x``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from meshapi.errors import IdentityError

PodUid = NewType("PodUid", str)
NodeName = NewType("NodeName", str)

# RFC 1123 labels / DNS subdomains as Kubernetes uses them for names and namespaces.
# fullmatch, never match with "$": "$" also matches before a trailing newline.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


def is_dns_label(value: str) -> bool:
    return _DNS_LABEL.fullmatch(value) is not None


def is_dns_subdomain(value: str) -> bool:
    """At most 253 characters of dot-separated RFC 1123 labels (no empty label)."""
    return len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


@dataclass(frozen=True, order=True, slots=True)
class SpiffeId:
    """``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if _TRUST_DOMAIN.fullmatch(self.trust_domain) is None:
            raise IdentityError(f"invalid trust domain {self.trust_domain!r}")
        if not is_dns_label(self.namespace):
            raise IdentityError(f"invalid namespace {self.namespace!r} in SPIFFE id")
        if not is_dns_subdomain(self.service_account):
            raise IdentityError(f"invalid service account {self.service_account!r} in SPIFFE id")

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        prefix = "spiffe://"
        if not value.startswith(prefix):
            raise IdentityError(f"{value!r} is not a SPIFFE id (must start with {prefix})")
        rest = value[len(prefix) :]
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise IdentityError(
                f"{value!r} is not a workload identity "
                "(expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
            )
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """A Service is named by ``<namespace>/<name>``."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, value: str) -> ServiceKey:
        namespace, sep, name = value.partition("/")
        if not sep or not is_dns_label(namespace) or not is_dns_label(name):
            raise IdentityError(f"{value!r} is not a service key (expected <namespace>/<name>)")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
