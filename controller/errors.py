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
    """A request did not carry a valid node bearer token."""
