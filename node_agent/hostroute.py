"""The source address the node uses towards a pod: where kubelet probes come from.

The kubelet connects to a pod's IP from the node's network namespace, so the probe's source is
the preferred source of the node's route to the pod (the bridge address with flannel or the
bridge plugin, the node's address with Calico or Cilium). ``--host-probe-ip auto`` exempts that
address from inbound capture, so probes reach the app directly, as without the mesh.
"""

from __future__ import annotations

import ipaddress
import logging

from node_agent.errors import AgentError

log = logging.getLogger(__name__)


def source_towards(ip: ipaddress.IPv4Address) -> ipaddress.IPv4Address | None:
    """The preferred source address of this netns's route to ``ip`` (None: no route, or a
    route without one). Blocking (one netlink request)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=str(ip))
    except (NetlinkError, OSError) as exc:
        raise AgentError(f"cannot look up the node's route to {ip}: {exc}") from exc
    for route in routes:
        src = route.get_attr("RTA_PREFSRC")
        if src:
            return ipaddress.IPv4Address(str(src))
    return None
