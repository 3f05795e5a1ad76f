"""Which redirection rules a pod needs, as data (pure: no I/O, no iptc).

Invariants:

* The plan lives in the pod's own netns, ``nat`` table, in two chains we own
  (``NODEMESH_PREROUTING``, ``NODEMESH_OUTPUT``) each reached by exactly one jump from the built-in
  chain of the same role, plus the IPv6 guard (``ipv6_guard``: fixed rules in the ip6tables
  ``filter`` table, see ``redirect.iptables.guard6``). Nothing else in the pod's tables is ours.
* Order inside a chain matters (first match wins), so chains are tuples.
* :class:`Rule` is a neutral description that both the iptables edge (to install and to read back)
  and :func:`render_iptables_save` (golden files, debugging) understand; two plans are equal iff
  the kernel rules they describe are equal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshapi.constants import (
    INBOUND_HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_CAPTURE_PORT,
    ZTUNNEL_SOCKET_MARK,
)

TABLE = "nat"
PREROUTING_CHAIN = "NODEMESH_PREROUTING"
OUTPUT_CHAIN = "NODEMESH_OUTPUT"
#: our chain → the built-in chain that jumps to it
JUMPS: tuple[tuple[str, str], ...] = (("PREROUTING", PREROUTING_CHAIN), ("OUTPUT", OUTPUT_CHAIN))
OWN_CHAINS = frozenset(own for _, own in JUMPS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; ``None`` fields do not match on anything.

    ``target`` is ``RETURN`` or ``REDIRECT`` (then ``to_port`` is set).
    """

    target: str
    protocol: str | None = None
    source: ipaddress.IPv4Network | None = None
    out_interface: str | None = None
    mark: int | None = None
    dport: int | None = None
    to_port: int | None = None


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """The rules of one pod: our chains (sorted by name) and the jumps into them."""

    chains: tuple[Chain, ...]
    jumps: tuple[tuple[str, str], ...] = JUMPS
    table: str = TABLE
    #: IPv6 TCP refused both ways but on loopback (the mesh carries IPv4): the ip6tables guard
    #: (``redirect.iptables.guard6``) or, in eBPF mode, the connect6 and sk_lookup programs
    ipv6_guard: bool = False

    def chain(self, name: str) -> Chain | None:
        for c in self.chains:
            if c.name == name:
                return c
        return None


#: what :func:`node_agent.redirect.iptables.read` reports for a netns with none of our rules
EMPTY = Plan(chains=(), jumps=())


@dataclass(frozen=True, slots=True)
class Settings:
    """Agent-wide inputs of the plan (the same for every pod on the node)."""

    host_probe_ip: ipaddress.IPv4Address | None = None
    outbound_port: int = OUTBOUND_CAPTURE_PORT
    inbound_port: int = INBOUND_PLAINTEXT_PORT
    hbone_port: int = INBOUND_HBONE_PORT
    mark: int = ZTUNNEL_SOCKET_MARK


def plan_for_pod(pod_ip: ipaddress.IPv4Address, settings: Settings) -> Plan:
    """The rules a pod with ``pod_ip`` needs.

    The rules match on no pod address (REDIRECT rewrites to the pod's own address), so the plan
    is the same for every pod of a node; ``pod_ip`` is validated so a plan is only ever made for a
    real pod address.
    """
    if pod_ip.is_unspecified or pod_ip.is_loopback:
        raise ValueError(f"{pod_ip} is not a pod address")
    outbound = Chain(
        OUTPUT_CHAIN,
        (
            # the ztunnel's own sockets (upstream connections, HBONE) must leave untouched
            Rule("RETURN", mark=settings.mark),
            # in-pod loopback, including connections to the pod's own IP, stays in the pod
            Rule("RETURN", out_interface="lo"),
            Rule("REDIRECT", protocol="tcp", to_port=settings.outbound_port),
        ),
    )
    inbound_rules = [
        # the ztunnel's HBONE listener is bound in the pod: deliver to it as is
        Rule("RETURN", protocol="tcp", dport=settings.hbone_port),
    ]
    if settings.host_probe_ip is not None:
        # kubelet-style health probes come from the node and must reach the app directly
        inbound_rules.append(
            Rule(
                "RETURN",
                protocol="tcp",
                source=ipaddress.IPv4Network(settings.host_probe_ip),
            )
        )
    inbound_rules.append(Rule("REDIRECT", protocol="tcp", to_port=settings.inbound_port))
    inbound = Chain(PREROUTING_CHAIN, tuple(inbound_rules))
    return Plan(chains=tuple(sorted((outbound, inbound), key=lambda c: c.name)), ipv6_guard=True)


def render_rule(chain: str, rule: Rule) -> str:
    """One ``-A`` line exactly as ``iptables-save`` prints it."""
    parts = ["-A", chain]
    if rule.source is not None:
        parts += ["-s", str(rule.source)]
    if rule.out_interface is not None:
        parts += ["-o", rule.out_interface]
    if rule.protocol is not None:
        parts += ["-p", rule.protocol]
    if rule.mark is not None:
        parts += ["-m", "mark", "--mark", hex(rule.mark)]
    if rule.dport is not None:
        parts += ["-m", rule.protocol or "tcp", "--dport", str(rule.dport)]
    parts += ["-j", rule.target]
    if rule.to_port is not None:
        parts += ["--to-ports", str(rule.to_port)]
    return " ".join(parts)


def render_iptables_save(plan: Plan) -> str:
    """The plan in ``iptables-save`` syntax, in the order ``iptables-legacy-save`` prints it
    (built-in chains' jumps in PREROUTING, INPUT, OUTPUT, POSTROUTING order, then our chains
    sorted by name), so it can be compared with the kernel's view line by line."""
    builtin_order = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
    lines = [f"*{plan.table}"]
    lines += [f":{c.name} - [0:0]" for c in plan.chains]
    for builtin in builtin_order:
        lines += [f"-A {src} -j {dst}" for src, dst in plan.jumps if src == builtin]
    for c in plan.chains:
        lines += [render_rule(c.name, r) for r in c.rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
