"""Errors of the controller. One base class, :class:`ControllerError`; every message says what to
check. Foreign exceptions (cryptography, OSError, YAML) are wrapped with ``raise ... from exc``."""

from __future__ import annotations


class ControllerError(Exception):
    """Base class of every error the controller raises on purpose."""


class StartupError(ControllerError):
    """The controller cannot start with this configuration (bad flag, unreadable file)."""


class CaError(StartupError):
    """The CA material is missing, unreadable or unusable (key does not match, not a CA...)."""


class CsrRejected(ControllerError):
    """A certificate signing request was refused.

    ``reason`` is a short metric label (``malformed``, ``signature``, ``key_type``, ``san``,
    ``trust_domain``, ``too_large``, ``forbidden``); ``status`` the HTTP status to answer.
    """

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        self.reason = reason
        self.message = message
        self.status = status
        super().__init__(message)


class AuthError(ControllerError):
    """A request did not carry a valid node bearer token. ``reason`` is a short metric label."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        self.reason = reason
        super().__init__(message)


class AuthUnavailable(ControllerError):
    """The node credential could not be checked right now (the TokenReview API failed): the node
    should retry, it is not refused. Answered with 503."""


class KubeError(ControllerError):
    """A call to the Kubernetes API failed. ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class LeaderError(ControllerError):
    """A Lease read from the API is malformed."""
