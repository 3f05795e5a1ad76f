"""The node agent's side of the chained CNI plugin (``cni/nodemesh-cni.c``).

New pods are redirected before their containers start: the container runtime runs
``nodemesh-cni`` as the last plugin of the node's CNI config list; the plugin relays the request
over a Unix socket to :class:`CniServer`, which calls the agent's :class:`CniBackend` and answers
only when the backend returns. The wire protocol is in :mod:`node_agent.cni.protocol`.

Modules: ``protocol`` (pure: framing, validation, CNI output), ``server`` (the socket),
``install`` (binary + config entry, pure planning and atomic writes), ``errors``. This package
does not import ``kubernetes``: the backend is given to it.

Wiring it into the agent (one ``asyncio.TaskGroup``, ``stop`` an ``asyncio.Event``)::

    from node_agent.cni import CniInstaller, CniServer

    server = CniServer(
        "/var/run/nodemesh/cni.sock",
        backend,                       # a CniBackend
        not_ready=lambda: None,        # optional: None, or why ADD cannot be served (STATUS)
    )
    installer = CniInstaller(
        plugin_binary="/usr/local/lib/nodemesh/nodemesh-cni",  # from `make -C cni`, in the image
        cni_bin_dir="/host/opt/cni/bin",                        # --cni-bin-dir (hostPath)
        cni_conf_dir="/host/etc/cni/net.d",                     # --cni-conf-dir (hostPath)
        socket_path="/var/run/nodemesh/cni.sock",               # informational in the entry
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(server.serve(stop))    # serve first: a chained plugin without its
        await server.ready.wait()             # agent fails every ADD (fail-closed)
        tg.create_task(installer.run(stop))   # installs, then re-checks every 2 s
    # only when the DaemonSet is being deleted (not on a restart or rolling update):
    report = await asyncio.to_thread(installer.uninstall)

Backend contract (``CniBackend``): ``add(AddRequest)`` returns when redirection is in place or
the pod is not enrolled, and raises :class:`CniFailure` (``msg``, ``details``, ``code`` ≥ 100)
to fail the pod sandbox; the kubelet retries it. ``delete(DelRequest)`` and
``check(CheckRequest)`` likewise. ADD and CHECK requests carry the pod's addresses from the
primary plugin's result (``pod_ips``); DEL may come with ``netns == ""`` (namespace gone). Any
other exception is a CNI error (code 101) with its message, logged with its traceback; a call
longer than ``backend_timeout`` (55 s) is cancelled and answered "try again later" (code 11).
Calls for different pods run concurrently; the runtime never runs two for the same container.
A backend must be idempotent: the kubelet repeats ADD after a failure or a timeout.

While the agent is down: ADD fails ("nodemesh node agent not reachable at <socket> ...; the
kubelet will retry"), DEL and CHECK succeed, STATUS (CNI 1.1) reports code 50; GC always
succeeds (the agent's pod watch, not the plugin, removes what belonged to deleted pods).
"""

from node_agent.cni.errors import CniCode, CniError, CniFailure, CniInstallError, CniServerError
from node_agent.cni.install import CniInstaller, Installed, Refused, UninstallReport, Waiting
from node_agent.cni.protocol import AddRequest, CheckRequest, ContainerId, DelRequest, PodIp
from node_agent.cni.server import DEFAULT_SOCKET, CniBackend, CniServer

__all__ = [
    "DEFAULT_SOCKET",
    "AddRequest",
    "CheckRequest",
    "CniBackend",
    "CniCode",
    "CniError",
    "CniFailure",
    "CniInstallError",
    "CniInstaller",
    "CniServer",
    "CniServerError",
    "ContainerId",
    "DelRequest",
    "Installed",
    "PodIp",
    "Refused",
    "UninstallReport",
    "Waiting",
]
