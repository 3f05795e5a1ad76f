from __future__ import annotations

import socket
import struct

import pytest

from ztunnel.errors import OriginalDestinationError
from ztunnel.outbound import original_dst, parse_sockaddr_in


def sockaddr_in(ip: str, port: int, family: int = socket.AF_INET) -> bytes:
    return struct.pack("<H", family) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def test_parse_sockaddr_in() -> None:
    assert parse_sockaddr_in(sockaddr_in("10.96.0.10", 80)) == ("10.96.0.10", 80)
    assert parse_sockaddr_in(sockaddr_in("192.168.1.250", 65535)) == ("192.168.1.250", 65535)


@pytest.mark.parametrize("raw", [b"", b"\x02\x00", sockaddr_in("1.2.3.4", 80, socket.AF_INET6),
                                 sockaddr_in("1.2.3.4", 0)])
def test_parse_sockaddr_in_rejects(raw: bytes) -> None:
    with pytest.raises(OriginalDestinationError):
        parse_sockaddr_in(raw)


def test_original_dst_on_unredirected_socket_explains() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(OriginalDestinationError):
        original_dst(a)


def test_original_dst_without_socket() -> None:
    with pytest.raises(OriginalDestinationError, match="no socket"):
        original_dst(None)
