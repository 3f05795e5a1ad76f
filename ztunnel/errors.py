"""Errors of the ztunnel. One base class; messages say what to check."""

from __future__ import annotations


class ZtunnelError(Exception):
    """Base class of every ztunnel error."""
