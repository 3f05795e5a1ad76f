"""The Python mirror of bpf/lib (constants, map names, struct layouts) against the C side, and
the packing of map keys and values."""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from pathlib import Path

import pytest

from node_agent.redirect.ebpf import consts as k

BPF = Path(__file__).resolve().parents[3] / "bpf"
C_TYPES = {"__u64": "Q", "__u32": "I"}


def c_defines() -> dict[str, int]:
    text = (BPF / "lib" / "consts.h").read_text()
    pattern = r"^#define (NM_\w+) (0x[0-9a-fA-F]+|\d+)"
    return {m[1]: int(m[2], 0) for m in re.finditer(pattern, text, re.M)}


def c_structs() -> dict[str, list[tuple[str, str]]]:
    text = (BPF / "lib" / "maps.h").read_text()
    out: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"^struct (\w+) \{(.*?)^\};", text, re.M | re.S):
        fields = re.findall(r"^\s*(__u\d+) (\w+);", m[2], re.M)
        out[m[1]] = [(name, ctype) for ctype, name in fields]
    return out


def test_every_define_is_mirrored_with_its_value() -> None:
    assert c_defines() == k.C_DEFINES


def test_struct_layouts_match_field_by_field() -> None:
    structs = c_structs()
    assert set(structs) == set(k.STRUCTS)
    for name, (fields, fmt) in k.STRUCTS.items():
        assert tuple(f for f, _ in structs[name]) == fields, name
        c_fmt = "=" + "".join(C_TYPES[t] for _, t in structs[name])
        # ip fields are raw network-order bytes on the Python side: same size as __u32
        assert struct.calcsize(fmt) == struct.calcsize(c_fmt), name
        py = fmt[1:].replace("4s", "I")
        assert py == c_fmt[1:], name


def test_map_names_are_the_declared_ones() -> None:
    text = (BPF / "lib" / "maps.h").read_text()
    pattern = r"^(?:BPF_TABLE_PINNED\(\"\w+\", [^,]+, [^,]+, |NM_SOCKHASH_PINNED\()(\w+),"
    declared = re.findall(pattern, text, re.M)
    assert tuple(declared) == k.MAPS


def test_one_program_file_per_attach_point() -> None:
    from node_agent.redirect.ebpf.loader import PROGRAMS

    assert sorted(p.name for p in BPF.glob("*.c")) == sorted(PROGRAMS)
    for fname, (func, _, _) in PROGRAMS.items():
        assert f"int {func}(" in (BPF / fname).read_text()


def test_pod_info_packing() -> None:
    info = k.PodInfo(ipaddress.IPv4Address("10.0.1.2"), ipaddress.IPv4Address("10.0.0.1"))
    raw = info.pack()
    assert len(raw) == 16
    assert raw[:4] == bytes([10, 0, 1, 2])  # network order, as the kernel's __be32
    assert raw[4:8] == bytes([10, 0, 0, 1])
    assert struct.unpack("=I", raw[8:12])[0] == k.NM_POD_HOST_PROBE
    assert k.PodInfo.unpack(raw) == info
    bare = k.PodInfo(ipaddress.IPv4Address("10.0.1.3"))
    assert struct.unpack("=I", bare.pack()[8:12])[0] == 0
    assert k.PodInfo.unpack(bare.pack()) == bare


def test_flow_and_listener_keys() -> None:
    key = k.FlowKey(0x1122334455667788, ipaddress.IPv4Address("10.0.1.2"), 40000)
    raw = key.pack()
    assert len(raw) == 16
    assert raw[:8] == struct.pack("=Q", 0x1122334455667788)
    assert raw[8:12] == bytes([10, 0, 1, 2])
    assert struct.unpack("=I", raw[12:])[0] == 40000  # host order, as sock_ops' local_port
    assert k.FlowKey.unpack(raw) == key
    lk = k.ListenerKey(7, k.NM_HBONE_PORT)
    assert len(lk.pack()) == 16 and k.ListenerKey.unpack(lk.pack()) == lk


def test_hop_key_and_its_peer() -> None:
    a, b = ipaddress.IPv4Address("10.0.1.2"), ipaddress.IPv4Address("10.0.1.3")
    key = k.HopKey(9, a, 40000, b, k.NM_OUTBOUND_PORT)
    raw = key.pack()
    assert len(raw) == 24
    assert raw[8:12] == bytes([10, 0, 1, 2]) and raw[12:16] == bytes([10, 0, 1, 3])
    assert struct.unpack("=II", raw[16:]) == (40000, k.NM_OUTBOUND_PORT)  # both host order
    assert k.HopKey.unpack(raw) == key
    assert key.peer() == k.HopKey(9, b, k.NM_OUTBOUND_PORT, a, 40000)
    assert key.peer().peer() == key


def test_orig_dst_and_its_sockaddr() -> None:
    od = k.OrigDst(ipaddress.IPv4Address("10.0.2.9"), 8080)
    assert k.OrigDst.unpack(od.pack()) == od
    sa = od.sockaddr_in()
    assert len(sa) == 16
    assert struct.unpack("=H", sa[:2])[0] == socket.AF_INET
    assert sa[2:4] == (8080).to_bytes(2, "big") and sa[4:8] == bytes([10, 0, 2, 9])


@pytest.mark.parametrize("cookie", [0, 1, 2**63 + 5])
def test_netns_key(cookie: int) -> None:
    assert k.netns_key(cookie) == struct.pack("=Q", cookie)
    assert k.ip_key(ipaddress.IPv4Address("1.2.3.4")) == bytes([1, 2, 3, 4])
