"""meshapi.httppath: the path and host L7 policy matches, per mesh-wide mode (table-driven)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshapi.httppath import (
    DEFAULT_PATH_NORMALIZATION,
    PathNormalization,
    ambiguous_method,
    normalize_host,
    normalize_path,
    parse_mode,
    split_query,
)

N, B, M, D = (PathNormalization.NONE, PathNormalization.BASE, PathNormalization.MERGE_SLASHES,
              PathNormalization.DECODE_AND_MERGE_SLASHES)

#: (path, NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES); None: the request is refused
TABLE = [
    ("/", "/", "/", "/", "/"),
    ("/a/b", "/a/b", "/a/b", "/a/b", "/a/b"),
    ("/a/./b", "/a/./b", "/a/b", "/a/b", "/a/b"),
    ("/a/../b", "/a/../b", "/b", "/b", "/b"),
    ("/../../a", "/../../a", "/a", "/a", "/a"),
    ("/a/b/..", "/a/b/..", "/a/", "/a/", "/a/"),
    ("/a/.", "/a/.", "/a/", "/a/", "/a/"),
    ("/admin/../admin/x", "/admin/../admin/x", "/admin/x", "/admin/x", "/admin/x"),
    ("/a/%2e%2E/b", "/a/%2e%2E/b", "/b", "/b", "/b"),
    ("/%61dmin", "/%61dmin", "/admin", "/admin", "/admin"),
    ("/%7e%5f%2D%2e", "/%7e%5f%2D%2e", "/~_-.", "/~_-.", "/~_-."),
    ("/a%3fb", "/a%3fb", "/a%3Fb", "/a%3Fb", "/a%3Fb"),
    ("/%c3%a9", "/%c3%a9", "/%C3%A9", "/%C3%A9", "/%C3%A9"),
    ("/%25", "/%25", "/%25", "/%25", "/%25"),
    ("/%252e%252e/", "/%252e%252e/", "/%252e%252e/", "/%252e%252e/", "/%252e%252e/"),
    ("//admin", "//admin", "//admin", "/admin", "/admin"),
    ("/a///b//", "/a///b//", "/a///b//", "/a/b/", "/a/b/"),
    ("/a//../b", "/a//../b", "/a/b", "/a/b", "/a/b"),
    ("/a\\b", "/a\\b", "/a/b", "/a/b", "/a/b"),
    ("/a\\..\\admin", "/a\\..\\admin", "/admin", "/admin", "/admin"),
    ("/admin%2Fx", "/admin%2Fx", None, None, "/admin/x"),
    ("/admin%2fx", "/admin%2fx", None, None, "/admin/x"),
    ("/admin%5Cx", "/admin%5Cx", None, None, "/admin/x"),
    ("/a%2F%2F..%2Fadmin", "/a%2F%2F..%2Fadmin", None, None, "/a/admin"),
    ("/a%zz", "/a%zz", None, None, None),
    ("/a%4", "/a%4", None, None, None),
    ("*", "*", "*", "*", "*"),
    ("", "", "", "", ""),
]


@pytest.mark.parametrize(("path", "none", "base", "merge", "decode"), TABLE)
def test_normalize_path(path: str, none: str | None, base: str | None, merge: str | None,
                        decode: str | None) -> None:
    for mode, want in ((N, none), (B, base), (M, merge), (D, decode)):
        assert normalize_path(path, mode) == want, mode


def test_default_merges_slashes_and_refuses_encoded_slashes() -> None:
    assert DEFAULT_PATH_NORMALIZATION is M
    assert normalize_path("//admin/x", DEFAULT_PATH_NORMALIZATION) == "/admin/x"
    assert normalize_path("/admin%2Fx", DEFAULT_PATH_NORMALIZATION) is None


_SEGMENT = st.sampled_from(["a", "admin", ".", "..", "", "%2e", "%2E%2e", "%2F", "%5c", "%41",
                            "%25", "\\", "x%3F", "%c3%A9", "~"])


@given(st.lists(_SEGMENT, max_size=12), st.sampled_from([B, M, D]))
def test_normalization_is_idempotent_and_leaves_no_dot_segment(
    segments: list[str], mode: PathNormalization
) -> None:
    path = "/" + "/".join(segments)
    once = normalize_path(path, mode)
    if once is None:
        return
    assert normalize_path(once, mode) == once
    assert "." not in once.split("/") and ".." not in once.split("/")
    assert "\\" not in once
    if mode is not B:
        assert "//" not in once


def test_query_is_not_part_of_the_path() -> None:
    assert split_query("/a/b?x=1&y=/..") == ("/a/b", "x=1&y=/..")
    assert split_query("/a") == ("/a", "")


@pytest.mark.parametrize(("host", "want"), [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("example.com.:8080", "example.com:8080"),
    ("[::1]:80", "[::1]:80"),
    ("[::1]", "[::1]"),
    ("", ""),
])
def test_normalize_host(host: str, want: str) -> None:
    assert normalize_host(host) == want


@pytest.mark.parametrize(("method", "ambiguous"), [
    ("GET", False), ("get", True), ("Delete", True), ("PATCH", False), ("patch", True),
    ("PROPFIND", False), ("propfind", False), ("x-custom", False),
])
def test_ambiguous_method(method: str, ambiguous: bool) -> None:
    assert ambiguous_method(method) is ambiguous


def test_parse_mode_names_the_choices() -> None:
    assert parse_mode("BASE") is B
    with pytest.raises(ValueError, match="expected one of NONE, BASE, MERGE_SLASHES"):
        parse_mode("base")
