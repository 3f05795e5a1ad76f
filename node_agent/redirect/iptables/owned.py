"""What the ``nat`` plan and the IPv6 guard do alike to a table: hold a handle, take out what
is ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import iptc

from node_agent.errors import RedirectError


def loaded(names_file: str, table: str) -> bool:
    """Has the calling thread's netns this legacy table at all? (``names_file``:
    ``ip_tables_names`` or ``ip6_tables_names``.) Opening a table to look would create it."""
    try:
        with open(f"/proc/thread-self/net/{names_file}") as f:
            return table in f.read().split()
    except FileNotFoundError:  # that family's tables are not in this kernel: none of ours
        return False


@contextlib.contextmanager
def held(table: Any, what: str) -> Iterator[Any]:
    """``table`` (a fresh handle) for the ``with`` body, closed after it; libiptc's errors
    become :class:`RedirectError` saying ``what`` failed."""
    try:
        yield table
    except iptc.IPTCError as exc:
        raise RedirectError(f"{what} failed: {exc}") from exc
    finally:
        table.close()


def clear(table: Any, jumps: Iterable[tuple[str, Any]], chains: Iterable[str]) -> bool:
    """Delete ``jumps`` ((built-in chain, rule) pairs) and the ``chains`` that exist, on an
    uncommitted handle; True if anything was there to delete."""
    changed = False
    for builtin, rule in jumps:
        iptc.Chain(table, builtin).delete_rule(rule)
        changed = True
    for name in sorted(chains):
        if table.is_chain(name):
            iptc.Chain(table, name).flush()
            table.delete_chain(name)
            changed = True
    return changed
