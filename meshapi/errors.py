"""Errors raised by the shared contract. One base class; every message names what was wrong and
where (a dotted/indexed field path), so the edge that caught it can tell the user exactly."""

from __future__ import annotations


class MeshApiError(Exception):
    """Base class of every error raised by ``meshapi``."""


class WireError(MeshApiError):
    """A wire object (JSON/YAML-shaped) did not match the contract.

    ``path`` is the field path inside the object, e.g. ``spec.ports[0].port``.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def under(self, prefix: str) -> WireError:
        """The same error, its path prefixed (used when a nested parser re-raises)."""
        if not prefix:
            return self
        joined = (
            f"{prefix}.{self.path}"
            if self.path and not self.path.startswith("[")
            else (f"{prefix}{self.path}")
        )
        return WireError(joined, self.message)


class IdentityError(MeshApiError):
    """A SPIFFE identity string could not be parsed."""
