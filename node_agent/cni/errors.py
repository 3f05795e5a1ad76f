"""Errors of the CNI subsystem, and the CNI error codes they carry.

One base class (:class:`CniError`, itself an :class:`~node_agent.errors.AgentError`). A
:class:`CniFailure` is what the container runtime sees: its ``msg``, ``details`` and ``code`` become
the CNI error object the plugin prints. Messages say what to check.
"""

from __future__ import annotations

import enum

from node_agent.errors import AgentError


class CniCode(enum.IntEnum):
    """CNI error codes: the spec's well-known ones (0-99) and nodemesh's own (100+).

    The C plugin (``cni/nodemesh-cni.c``) uses the same numbers for the errors it makes itself.
    """

    INCOMPATIBLE_VERSION = 1
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    #: the backend could not put redirection in place (default of :class:`CniFailure`)
    REDIRECTION_FAILED = 100
    #: the backend raised something unexpected: a bug in the agent, logged with its traceback
    AGENT_INTERNAL = 101
    #: plugin and agent disagree on the wire protocol (different nodemesh versions)
    AGENT_PROTOCOL = 102


class CniError(AgentError):
    """Base class of every error raised by ``node_agent.cni``."""


class CniFailure(CniError):
    """A CNI request failed: the runtime gets ``{"code", "msg", "details"}`` and fails the pod
    sandbox (ADD) or retries it. Backends raise it to fail a request on purpose."""

    def __init__(
        self, msg: str, details: str = "", code: int = CniCode.REDIRECTION_FAILED
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        self.code = int(code)


class CniRequestError(CniFailure):
    """The request itself is invalid (frame, CNI variables or network configuration).

    ``command`` and ``cni_version`` are whatever could be read before the error (or ``None``):
    the server needs them to answer a broken DEL with success and to label the error object.
    """

    def __init__(
        self,
        msg: str,
        details: str = "",
        code: int = CniCode.INVALID_CONFIG,
        *,
        command: str | None = None,
        cni_version: str | None = None,
    ) -> None:
        super().__init__(msg, details, code)
        self.command = command
        self.cni_version = cni_version


class CniServerError(CniError):
    """The CNI socket cannot be served (path in use by another agent, not a socket, ...)."""


class CniInstallError(CniError):
    """Installing or removing the plugin binary or its entry in the CNI configuration failed."""
