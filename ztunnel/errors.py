"""Errors of the ztunnel. One base class; messages say what to check."""

from __future__ import annotations


class ZtunnelError(Exception):
    """Base class of every ztunnel error."""


class NetnsError(ZtunnelError):
    """Entering, leaving or working inside a pod's network namespace failed."""


class ZdsError(ZtunnelError):
    """A message from the node agent over the ZDS socket was invalid or could not be applied."""


class PodError(ZtunnelError):
    """A pod could not be added (listeners, certificate) or is not served."""


class OriginalDestinationError(ZtunnelError):
    """The original destination of a captured connection could not be read."""


class DiscoveryError(ZtunnelError):
    """The discovery stream from the controller failed or sent something invalid."""


class ConfigError(ZtunnelError):
    """A flag or environment variable has an invalid value."""


# --- HBONE layer (certs.py, tls.py, hbone/) --------------------------------------------------


class CertError(ZtunnelError):
    """A workload certificate could not be obtained, parsed or loaded."""


class TlsIdentityError(ZtunnelError):
    """A TLS peer's certificate does not carry exactly one acceptable SPIFFE identity."""


class HboneError(ZtunnelError):
    """Base of every HBONE (HTTP/2 CONNECT over mutual TLS) error."""


class HboneConnectError(HboneError):
    """The TCP connection or the TLS handshake to an HBONE peer failed."""


class HboneIdentityError(HboneError):
    """The HBONE server presented an identity other than the expected destination."""


class HboneStatusError(HboneError):
    """The HBONE server answered the CONNECT with a status other than 200."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HboneTimeout(HboneError):
    """An HBONE connect or CONNECT exchange did not finish in time."""


class HboneStreamError(HboneError):
    """An established HBONE stream was reset or its connection was lost."""


class HboneUnprocessed(HboneStreamError):
    """The peer's GOAWAY names a last stream below this one: it never saw the stream, so the
    request is safe to send again on another connection (RFC 9113 section 6.8)."""
