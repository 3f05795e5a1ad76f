"""IPv6 in an enrolled pod, iptables mode: the mesh carries IPv4 only (pods are redirected by
their IPv4 address, the ``nat`` plan), so on a dual-stack network an enrolled pod's IPv6 TCP
would go around it in plaintext, and reach its app around a STRICT PeerAuthentication. The guard
closes that, as the eBPF mode's connect6 and sk_lookup programs do: in the pod's ip6tables
``filter`` table, outgoing TCP is rejected (reset) and incoming TCP dropped, except on loopback
and for the ztunnel's own (marked) sockets. IPv4-mapped traffic of dual-stack sockets is IPv4 on
the wire: the ``nat`` plan captures it.

Invariants: two chains we own (``NODEMESH_V6_INPUT``, ``NODEMESH_V6_OUTPUT``), each reached by
exactly one plain jump at the head of ``INPUT`` / ``OUTPUT``; nothing else in the table is
touched; a guard that differs in any way is rewritten whole, in one commit. Functions run in the
caller's netns (inside ``run_in_netns``) under the caller's lock. A kernel without IPv6 needs no
guard: it counts as present and is never written.
"""

from __future__ import annotations

import os
from typing import Any

import iptc

from meshapi.constants import ZTUNNEL_SOCKET_MARK
from node_agent.redirect.iptables import owned

TABLE = "filter"
INPUT_CHAIN = "NODEMESH_V6_INPUT"
OUTPUT_CHAIN = "NODEMESH_V6_OUTPUT"
JUMPS: tuple[tuple[str, str], ...] = (("INPUT", INPUT_CHAIN), ("OUTPUT", OUTPUT_CHAIN))
OWN_CHAINS = frozenset(own for _, own in JUMPS)


def ipv6_available() -> bool:
    return os.path.exists("/proc/sys/net/ipv6")


def _rules(chain: str, mark: int) -> list[Any]:
    out: list[Any] = []
    if chain == OUTPUT_CHAIN:
        r = iptc.Rule6()
        r.out_interface = "lo"
        r.create_target("RETURN")
        out.append(r)
        r = iptc.Rule6()
        m = r.create_match("mark")
        m.mark = hex(mark)
        r.create_target("RETURN")
        out.append(r)
        r = iptc.Rule6()
        r.protocol = "tcp"
        t = r.create_target("REJECT")
        t.reject_with = "tcp-reset"
        out.append(r)
    else:
        r = iptc.Rule6()
        r.in_interface = "lo"
        r.create_target("RETURN")
        out.append(r)
        r = iptc.Rule6()
        r.protocol = "tcp"
        r.create_target("DROP")
        out.append(r)
    return out


def render_ip6tables_save(mark: int = ZTUNNEL_SOCKET_MARK) -> str:
    """The guard as ``ip6tables-legacy-save -t filter`` prints it (without counters, comments
    and the built-in chains' policies), for golden files."""
    return "\n".join([
        "*filter",
        f":{INPUT_CHAIN} - [0:0]",
        f":{OUTPUT_CHAIN} - [0:0]",
        f"-A INPUT -j {INPUT_CHAIN}",
        f"-A OUTPUT -j {OUTPUT_CHAIN}",
        f"-A {INPUT_CHAIN} -i lo -j RETURN",
        f"-A {INPUT_CHAIN} -p tcp -j DROP",
        f"-A {OUTPUT_CHAIN} -o lo -j RETURN",
        f"-A {OUTPUT_CHAIN} -m mark --mark {hex(mark)} -j RETURN",
        f"-A {OUTPUT_CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
        "COMMIT",
    ]) + "\n"


def _canon(rule: Any) -> tuple[object, ...]:
    def params(d: dict[str, list[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple(sorted((k, tuple(v)) for k, v in d.items()))

    return (
        rule.src, rule.dst, rule.in_interface, rule.out_interface, rule.protocol,
        tuple((m.name, params(m.get_all_parameters())) for m in rule.matches),
        rule.target.name, params(rule.target.get_all_parameters()),
    )


def _open() -> Any:
    table = iptc.Table6(TABLE, autocommit=False)
    table.refresh()  # a fresh handle in this thread's netns
    return table


def _jumps(table: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for builtin in ("INPUT", "FORWARD", "OUTPUT"):
        for rule in iptc.Chain(table, builtin).rules:
            if rule.target.name in OWN_CHAINS:
                out.append((builtin, rule))
    return out


def _is_plain(rule: Any) -> bool:
    any6 = "::/0"
    return (
        rule.src == any6 and rule.dst == any6 and rule.in_interface is None
        and rule.out_interface is None and rule.protocol in ("ip", "all", "ipv6", None)
        and not rule.matches
    )


def _exact(table: Any, mark: int) -> bool:
    jumps = _jumps(table)
    if sorted((b, r.target.name) for b, r in jumps) != sorted(JUMPS):
        return False
    if not all(_is_plain(r) for _, r in jumps):
        return False
    for chain in OWN_CHAINS:
        if not table.is_chain(chain):
            return False
        have = [_canon(r) for r in iptc.Chain(table, chain).rules]
        if have != [_canon(r) for r in _rules(chain, mark)]:
            return False
    return True


def present_current(mark: int = ZTUNNEL_SOCKET_MARK) -> bool:
    """Is exactly our guard in the current netns? (True without IPv6: nothing to guard.)"""
    if not ipv6_available():
        return True
    if not owned.loaded("ip6_tables_names", TABLE):
        return False
    with owned.held(_open(), "reading the ip6tables guard") as table:
        return _exact(table, mark)


def apply_current(mark: int = ZTUNNEL_SOCKET_MARK) -> bool:
    """Put exactly our guard in the current netns; True if anything changed."""
    if not ipv6_available():
        return False
    with owned.held(_open(), "installing the ip6tables guard") as table:
        if _exact(table, mark):
            return False
        _clear(table)
        for chain in sorted(OWN_CHAINS):
            table.create_chain(chain)
            ic = iptc.Chain(table, chain)
            for rule in _rules(chain, mark):
                ic.append_rule(rule)
        for builtin, own in JUMPS:
            jump = iptc.Rule6()
            jump.create_target(own)
            iptc.Chain(table, builtin).insert_rule(jump)
        table.commit()
        return True


def remove_current() -> bool:
    """Delete our guard from the current netns (loading no table that is not there); True if
    anything of it was there."""
    if not ipv6_available() or not owned.loaded("ip6_tables_names", TABLE):
        return False
    with owned.held(_open(), "removing the ip6tables guard") as table:
        changed = _clear(table)
        if changed:
            table.commit()
        return changed


def _clear(table: Any) -> bool:
    return owned.clear(table, _jumps(table), OWN_CHAINS)
