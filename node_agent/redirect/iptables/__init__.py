"""The ``iptables`` redirection mode: the only module that imports ``iptc`` (python-iptables).

Invariants:

* Every function enters the pod's netns in its own thread (:func:`node_agent.netns.run_in_netns`)
  and holds one process-wide lock: python-iptables caches one handle per table name, and a handle
  belongs to the netns it was opened in, so it is re-opened (``refresh``) on every call.
* Changes are made on one handle and committed once: libiptc replaces the table atomically, so a
  pod is never half-redirected.
* Minimal: :func:`apply` rewrites only what differs from the plan (an equal chain keeps its rules
  and counters, nothing is flushed when all is equal); :func:`remove` touches only our jumps and
  chains. Connections already established are never disturbed (NAT decisions live in conntrack).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import iptc

from node_agent.errors import NetnsError, RedirectError
from node_agent.netns import run_in_netns
from node_agent.redirect.iptables import guard6, owned
from node_agent.redirect.plan import EMPTY, JUMPS, OWN_CHAINS, TABLE, Chain, Plan, Rule

T = TypeVar("T")

MODE = "iptables"
_LOCK = threading.Lock()
_ANY = "0.0.0.0/0.0.0.0"
_BUILTINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def _open(table_name: str) -> Any:
    table = iptc.Table(table_name, autocommit=False)
    table.refresh()  # a fresh handle in *this* thread's netns
    return table


def _opaque(why: str) -> Rule:
    """A rule we did not write: it never equals a planned rule, so apply rewrites the chain."""
    return Rule(target=f"?{why}")


def _neutral(rule: Any) -> Rule:
    """Read one iptc rule back into the neutral form (see :mod:`plan`)."""
    if rule.dst != _ANY or rule.in_interface is not None:
        return _opaque(f"dst={rule.dst} in={rule.in_interface}")
    source = None if rule.src == _ANY else ipaddress.IPv4Network(rule.src)
    protocol = None if rule.protocol in ("ip", "all", None) else str(rule.protocol)
    mark: int | None = None
    dport: int | None = None
    for match in rule.matches:
        params = match.get_all_parameters()
        if match.name == "mark" and set(params) == {"mark"}:
            value, _, mask = params["mark"][0].partition("/")
            if mask and int(mask, 16) != 0xFFFFFFFF:
                return _opaque(f"mark {params}")
            mark = int(value, 16)
        elif match.name == protocol and set(params) == {"dport"}:
            dport = int(params["dport"][0])
        else:
            return _opaque(f"match {match.name} {params}")
    target = rule.target.name
    tparams = rule.target.get_all_parameters()
    to_port: int | None = None
    if target == "REDIRECT" and set(tparams) == {"to-ports"}:
        to_port = int(tparams["to-ports"][0])
    elif tparams:
        return _opaque(f"target {target} {tparams}")
    return Rule(
        target=target,
        protocol=protocol,
        source=source,
        out_interface=rule.out_interface,
        mark=mark,
        dport=dport,
        to_port=to_port,
    )


def _iptc_rule(rule: Rule) -> Any:
    r = iptc.Rule()
    if rule.source is not None:
        r.src = str(rule.source)
    if rule.out_interface is not None:
        r.out_interface = rule.out_interface
    if rule.protocol is not None:
        r.protocol = rule.protocol
    if rule.mark is not None:
        m = r.create_match("mark")
        m.mark = hex(rule.mark)
    if rule.dport is not None:
        m = r.create_match(rule.protocol or "tcp")
        m.dport = str(rule.dport)
    t = r.create_target(rule.target)
    if rule.to_port is not None:
        t.to_ports = str(rule.to_port)
    return r


def _is_plain_jump(rule: Any) -> bool:
    return (
        rule.src == _ANY
        and rule.dst == _ANY
        and rule.in_interface is None
        and rule.out_interface is None
        and rule.protocol in ("ip", "all", None)
        and not rule.matches
    )


def _jump_rules(table: Any) -> list[tuple[str, Any]]:
    """(built-in chain, rule) for every rule of a built-in chain that targets one of ours."""
    out: list[tuple[str, Any]] = []
    for name in _BUILTINS:
        if not table.is_chain(name):
            continue
        for rule in iptc.Chain(table, name).rules:
            if rule.target.name in OWN_CHAINS:
                out.append((name, rule))
    return out


def _read_table(table: Any) -> Plan:
    chains = tuple(
        Chain(name, tuple(_neutral(r) for r in iptc.Chain(table, name).rules))
        for name in sorted(OWN_CHAINS)
        if table.is_chain(name)
    )
    jumps = tuple(
        (builtin, rule.target.name if _is_plain_jump(rule) else f"{rule.target.name}?")
        for builtin, rule in _jump_rules(table)
    )
    if not chains and not jumps:
        return EMPTY
    return Plan(chains=chains, jumps=jumps, table=TABLE)


def read_current() -> Plan:
    """Our rules in the current thread's netns (call only inside :func:`run_in_netns`)."""
    with _LOCK:
        table = _open(TABLE)
        try:
            nat = _read_table(table)
        finally:
            table.close()
        guarded = guard6.present_current()
    if not guarded and nat == EMPTY:
        return EMPTY
    return dataclasses.replace(nat, ipv6_guard=guarded)


def apply_current(plan: Plan) -> bool:
    """Make our rules in the current thread's netns equal ``plan``; True if anything changed."""
    if plan.table != TABLE or set(plan.jumps) - set(JUMPS):
        raise RedirectError(f"plan outside the {TABLE} table or with unknown jumps: {plan}")
    with _LOCK:
        # the guard first: a pod must not be captured for IPv4 and open for IPv6
        guard_changed = (
            guard6.apply_current() if plan.ipv6_guard else guard6.remove_current()
        )
        return _apply_nat(plan) or guard_changed


def _apply_nat(plan: Plan) -> bool:
    """The ``nat`` part of :func:`apply_current` (under the lock)."""
    nat = dataclasses.replace(plan, ipv6_guard=False)
    with owned.held(_open(TABLE), "iptables update") as table:
        current = _read_table(table)
        if current == nat:
            return False
        wanted = {c.name: c for c in plan.chains}
        have = {c.name: c for c in current.chains}
        # 1. jumps: drop every jump that is not exactly one wanted plain jump
        kept: set[tuple[str, str]] = set()
        for builtin, rule in _jump_rules(table):
            key = (builtin, rule.target.name)
            if _is_plain_jump(rule) and key in plan.jumps and key not in kept:
                kept.add(key)
            else:
                iptc.Chain(table, builtin).delete_rule(rule)
        # 2. our chains: rewrite only those that differ, delete the unwanted
        for name in sorted(OWN_CHAINS):
            chain = wanted.get(name)
            if chain is None:
                if name in have:
                    iptc.Chain(table, name).flush()
                    table.delete_chain(name)
                continue
            if have.get(name) == chain:
                continue
            if name in have:
                iptc.Chain(table, name).flush()
            else:
                table.create_chain(name)
            ic = iptc.Chain(table, name)
            for rule in chain.rules:
                ic.append_rule(_iptc_rule(rule))
        # 3. missing jumps go first in their built-in chain: capture precedes other NAT
        for builtin, own in plan.jumps:
            if (builtin, own) not in kept:
                jump = iptc.Rule()
                jump.create_target(own)
                iptc.Chain(table, builtin).insert_rule(jump)
        table.commit()
        return True


def remove_current() -> bool:
    """Delete our jumps and chains in the current thread's netns; True if any were there."""
    with _LOCK:
        with owned.held(_open(TABLE), "iptables removal") as table:
            changed = owned.clear(table, _jump_rules(table), OWN_CHAINS)
            if changed:
                table.commit()
        return guard6.remove_current() or changed


def remove_current_if_loaded() -> bool:
    """:func:`remove_current`, but only if this netns has a legacy ``nat`` table at all: opening
    one would create it (a pod redirected with eBPF then grows an empty iptables table)."""
    if owned.loaded("ip_tables_names", TABLE):
        return remove_current()
    with _LOCK:
        return guard6.remove_current()


def _wrap(netns_path: str, what: str, exc: Exception) -> RedirectError:
    if isinstance(exc, RedirectError):
        return exc
    return RedirectError(f"{what} in netns {netns_path} failed: {exc}")


def _in_netns(netns_path: str, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside ``netns_path`` (worker thread); foreign errors become RedirectError."""
    try:
        return run_in_netns(netns_path, fn)
    except NetnsError:
        raise
    except Exception as exc:
        raise _wrap(netns_path, what, exc) from exc


def apply(netns_path: str, plan: Plan) -> bool:
    """Blocking: enter ``netns_path`` in a worker thread and :func:`apply_current`."""
    return _in_netns(netns_path, "applying rules", lambda: apply_current(plan))


def read(netns_path: str) -> Plan:
    """Blocking: our rules in ``netns_path`` (``plan.EMPTY`` if none)."""
    return _in_netns(netns_path, "reading rules", read_current)


def remove(netns_path: str) -> bool:
    """Blocking: delete our rules in ``netns_path``."""
    return _in_netns(netns_path, "removing rules", remove_current)


def remove_leftovers(netns_path: str) -> bool:
    """Blocking: delete rules an iptables-mode agent left in ``netns_path`` (the node has since
    moved to eBPF); True if there were any. Loads no table that is not there."""
    return _in_netns(netns_path, "removing iptables leftovers", remove_current_if_loaded)


class IptablesRedirector:
    """:class:`node_agent.redirect.Redirector` for the ``iptables`` mode."""

    mode = MODE

    async def apply(self, netns_path: str, plan: Plan, pod_ip: ipaddress.IPv4Address) -> bool:
        return await asyncio.to_thread(apply, netns_path, plan)

    async def read(self, netns_path: str) -> Plan:
        return await asyncio.to_thread(read, netns_path)

    async def remove(self, netns_path: str) -> bool:
        return await asyncio.to_thread(remove, netns_path)

    async def collect(self, live_netns: Iterable[str]) -> int:
        return 0  # rules live in the pod netns and go with it
