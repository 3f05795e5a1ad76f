"""A minimal pcap reader for the capture test: classic pcap, Ethernet, IPv4, TCP. Enough to see
which ports carried payload, what the payload was, and the TLS version a ServerHello chose."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read(path: Path) -> list[Segment]:
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"unsupported link type {linktype} (want Ethernet)")
    off, out = 24, []
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack("!HH", tcp[:4])
        doff = (tcp[12] >> 4) * 4
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        out.append(Segment((src, sport), (dst, dport), bytes(tcp[doff:])))
    return out


def stream(segments: list[Segment], src_port: int) -> bytes:
    """Concatenated payload sent from ``src_port`` (good enough for one short connection)."""
    return b"".join(s.payload for s in segments if s.src[1] == src_port)


def server_hello_version(server_bytes: bytes) -> int | None:
    """The TLS version a ServerHello selected: supported_versions if present, else legacy."""
    i = 0
    while i + 5 <= len(server_bytes):
        ctype, _, length = server_bytes[i], server_bytes[i + 1 : i + 3], struct.unpack(
            "!H", server_bytes[i + 3 : i + 5])[0]
        body = server_bytes[i + 5 : i + 5 + length]
        i += 5 + length
        if ctype != 22 or not body or body[0] != 2:
            continue
        hs = body[4:]
        legacy = struct.unpack("!H", hs[0:2])[0]
        p = 2 + 32
        sid_len = hs[p]
        p += 1 + sid_len + 2 + 1  # session id, cipher suite, compression
        ext_total = struct.unpack("!H", hs[p : p + 2])[0]
        p += 2
        end = p + ext_total
        while p + 4 <= end:
            etype, elen = struct.unpack("!HH", hs[p : p + 4])
            if etype == 43 and elen == 2:
                return int(struct.unpack("!H", hs[p + 4 : p + 6])[0])
            p += 4 + elen
        return legacy
    return None
