"""The shared contract of nodemesh: identities, the workload/service model, and the messages
exchanged between controller, node agent and ztunnel.

Invariants: stdlib only, no I/O, every type past the wire edge is a frozen dataclass built by a
``from_wire`` that raises :class:`meshapi.errors.WireError` naming the offending field path.
"""
