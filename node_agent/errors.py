"""Errors of the node agent. One base class; every message says what to check."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised by ``node_agent``."""


class ConfigError(AgentError):
    """A flag or environment variable is missing or invalid."""


class NetnsError(AgentError):
    """A pod network namespace could not be opened or entered."""


class RedirectError(AgentError):
    """Installing, reading or removing redirection rules failed."""


class ZdsError(AgentError):
    """The agent↔ztunnel (ZDS) connection failed or the ztunnel refused a request."""


class DiscoveryError(AgentError):
    """The controller's discovery stream failed."""
