"""What the ``nat`` plan and the IPv6 guard do alike to a table: take out what is ours."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import iptc


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
