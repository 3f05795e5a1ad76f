"""The fuzz tier for the CSR endpoint (``tests/fuzz/targets/csr.py``): real CSRs (P-256,
P-384, RSA and Ed25519 keys; good, foreign, odd and extra SANs; extra extensions), some with a
broken signature or truncated or mutated DER, inside PEM inside the JSON body, which is itself
mutated; plus raw bodies.

CSRs are built once per (key, SANs, extensions) and cached (tests/fuzz/targets/csr.py), so
the harness runs the default number of examples; the RSA key is generated once at import."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.fuzz.strategies import json_text, mutated_wire
from tests.fuzz.targets.csr import KEYS, SANS, build_csr, to_pem
from tests.fuzz.targets.http import mutated

pytestmark = pytest.mark.fuzz

@st.composite
def _der(draw: st.DrawFn) -> bytes:
    key = draw(st.sampled_from(["p256"] * 4 + sorted(KEYS)))
    sans = draw(st.sampled_from([["good"]] * 4 + [[]] + [[s] for s in sorted(SANS)])
                | st.lists(st.sampled_from(sorted(SANS)), min_size=2, max_size=3))
    der = bytearray(build_csr(key, tuple(sans), extra_ext=draw(st.booleans()),
                              ca=draw(st.integers(0, 5)) == 0,
                              subject=draw(st.booleans())))
    damage = draw(st.sampled_from(["none"] * 4 + ["signature", "truncate", "flip", "length"]))
    if damage == "signature":
        der[-3] ^= 0x40
    elif damage == "truncate":
        del der[draw(st.integers(1, len(der) - 1)):]
    elif damage == "flip":
        der[draw(st.integers(0, len(der) - 1))] ^= draw(st.integers(1, 255))
    elif damage == "length":
        der[1] = draw(st.sampled_from([0x00, 0x80, 0x84, 0xFF]))
    return bytes(der)


@st.composite
def _pem(draw: st.DrawFn) -> str:
    der = draw(_der())
    label = draw(st.sampled_from(["CERTIFICATE REQUEST"] * 6 + ["NEW CERTIFICATE REQUEST",
                                  "CERTIFICATE", "PRIVATE KEY", ""]))
    pem = to_pem(der, label)
    trick = draw(st.integers(0, 9))
    if trick == 0:
        pem = pem + to_pem(der, label)  # two blocks
    elif trick == 1:
        pem = pem.replace("\n", "\r\n")
    elif trick == 2:
        pem = "garbage before\n" + pem + "garbage after"
    elif trick == 3:
        pem = pem[: draw(st.integers(0, len(pem)))]
    elif trick == 4:
        pem = pem.replace("A", "\u00c0", 1)  # not ASCII
    return pem


_BODY = _pem().flatmap(lambda pem: mutated_wire({"csr": pem}, ["csr"])).flatmap(json_text)


@given(_BODY)
def test_csr_body_near_valid(data: bytes) -> None:
    check("csr.body", data)


@given(st.binary(max_size=512)
       | st.sampled_from([b'{"csr": ' + b"[" * 20000 + b"]" * 20000 + b"}", b"x" * 20000,
                          json.dumps({"csr": "\ud800"}).encode()]))
def test_csr_body_raw_bytes(data: bytes) -> None:
    check("csr.body", data)


@given(mutated(_pem().map(lambda p: json.dumps({"csr": p}).encode())))
def test_csr_body_mutated_bytes(data: bytes) -> None:
    check("csr.body", data)
