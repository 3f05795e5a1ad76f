"""Errors raised by meshctl. One base class, :class:`MeshctlError`; ``cli.main`` prints its
message and exits 1. Every message says what to check next, not only what failed."""

from __future__ import annotations


class MeshctlError(Exception):
    """Base class of every error meshctl reports to the user."""


class TopologyError(MeshctlError):
    """The requested local topology is not valid (e.g. fewer than two nodes)."""


class ManifestError(MeshctlError):
    """A YAML manifest given to ``apply``/``delete`` is malformed.

    The message names the file, the document index (0-based) and the field.
    """

    def __init__(self, file: str, index: int | None, field: str, message: str) -> None:
        self.file = file
        self.index = index
        self.field = field
        where = file if index is None else f"{file}: document {index}"
        if field:
            where = f"{where}: {field}"
        super().__init__(f"{where}: {message}")


class NetworkError(MeshctlError):
    """Building or removing a namespace, link, address or route failed."""


class ClusterError(MeshctlError):
    """The local cluster could not be built, reached or torn down."""


class PodNotFoundError(MeshctlError):
    """``local exec`` named a pod that the current cluster does not have."""
