"""The node agent on Kubernetes (``--source kubernetes``): the pod source, the /proc scan, the
redirection annotation, the CNI plugin's backend, and what happens at shutdown.

Tasks (all in the agent's TaskGroup): two watches (this node's pods, all namespaces) feeding
:class:`~node_agent.kube.state.NodePods`; a scanner that looks in /proc for the netns of enrolled
pods the CNI plugin never told us about (they predate the agent); an annotator that keeps each
pod's ``nodemesh.io/redirection`` annotation equal to its state.

Shutdown: an agent restart (rolling update, crash) leaves every pod's redirection in place and
the CNI entry installed, so no pod is disturbed. Only when our DaemonSet is gone or being deleted
(an uninstall) does the agent take the redirection out of every pod and remove the CNI plugin
and its config entry, so pods keep working, unmeshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, cast

from meshapi.kubeobjects import PodRaw
from meshapi.kubewatch import ObjectKey, Reflector
from node_agent import podnetns
from node_agent.cni import fallback
from node_agent.cni.errors import CniCode, CniFailure
from node_agent.cni.install import CniInstaller
from node_agent.cni.protocol import AddRequest, CheckRequest, DelRequest
from node_agent.cni.server import CniServer
from node_agent.config import KubeConfig
from node_agent.errors import AgentError
from node_agent.kube.api import NodeApi, Watch, api_client
from node_agent.kube.state import (
    REDIRECTION_ANNOTATION,
    CniPod,
    NodePods,
    annotation_changes,
    pod_enrolled,
)
from node_agent.metrics import AgentMetrics
from node_agent.reconcile import Agent

log = logging.getLogger(__name__)

#: how often enrolled pods without a known netns are looked for in /proc
SCAN_SECONDS = 5.0
#: how long a CNI ADD waits for the pod's redirection before failing the sandbox
CNI_ADD_TIMEOUT_SECONDS = 30.0


class KubeNode:
    def __init__(
        self, node: str, config: KubeConfig, metrics: AgentMetrics | None = None
    ) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self.pods = NodePods(node, config.trust_domain, self._pods_changed)
        self.api = NodeApi(api_client(config.kubeconfig), node)
        self.agent: Agent | None = None
        self._watches: list[Watch] = []
        self._annotate = asyncio.Event()
        self._scan = asyncio.Event()
        self._fallback = asyncio.Event()
        #: what the fallback file holds now (None: not written yet) and the last error writing it
        self.fallback_written: list[str] | None = None
        self.fallback_error: str | None = None
        self.annotation_errors = 0
        self.last_scan: float | None = None
        self.installer: CniInstaller | None = None
        if config.cni_plugin and config.cni_bin_dir and config.cni_conf_dir:
            self.installer = CniInstaller(
                plugin_binary=str(config.cni_plugin),
                cni_bin_dir=str(config.cni_bin_dir),
                cni_conf_dir=str(config.cni_conf_dir),
                socket_path=str(config.cni_socket),
            )

    def _pods_changed(self) -> None:
        self._scan.set()
        self._annotate.set()
        if self.agent is not None:
            self.agent.notify()

    def status_changed(self) -> None:
        """The agent's per-pod state changed (annotations may need an update)."""
        self._annotate.set()

    # ---- watches --------------------------------------------------------------------------

    def start_watches(self, loop: asyncio.AbstractEventLoop) -> None:
        self.metrics.init_watches()
        pods = Watch(
            "pods", self.api.pods_call(), Reflector("Pod", "v1"), self._on_pods, loop,
            metrics=self.metrics,
        )
        namespaces = Watch(
            "namespaces", self.api.namespaces_call(), Reflector("Namespace", "v1"),
            self._on_namespaces, loop, metrics=self.metrics,
        )
        self._watches = [pods, namespaces]
        for w in self._watches:
            w.start()

    def _on_pods(self, store: Mapping[ObjectKey, object]) -> None:
        self.pods.set_pods(store)
        self._scan.set()
        self._annotate.set()
        self._fallback.set()

    def _on_namespaces(self, store: Mapping[ObjectKey, object]) -> None:
        self.pods.set_namespaces(store)
        self._scan.set()
        self._annotate.set()
        self._fallback.set()

    async def stop_watches(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self._watches))

    # ---- /proc scan ----------------------------------------------------------------------

    async def scan_loop(self) -> None:
        """Find netns for enrolled pods that have none; at start (the agent does not decide
        before the first scan) and whenever such pods exist."""
        while True:
            if self.pods.pods_synced and self.pods.namespaces_synced:
                missing = self.pods.missing_netns()
                found: dict[str, str] = {}
                if missing:
                    try:
                        found = await asyncio.to_thread(
                            podnetns.find, self.config.proc_root, missing
                        )
                    except (AgentError, OSError) as exc:
                        log.warning("cannot scan %s for pod netns: %s", self.config.proc_root, exc)
                    for uid, path in sorted(found.items()):
                        log.info("found the netns of pod %s in /proc: %s", uid, path)
                self.last_scan = time.time()
                self.pods.set_scanned(found)
            self._scan.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SCAN_SECONDS):
                    await self._scan.wait()

    # ---- the CNI plugin's fallback list ----------------------------------------------------

    async def fallback_loop(self) -> None:
        """Keep the fallback file (node_agent.cni.fallback) equal to what the watches say, so
        that a pod outside the mesh can start while this agent is down."""
        path = self.config.cni_fallback_file
        if path is None:
            # turned off: a list an earlier agent left where it writes by default must not
            # keep letting pods through
            stale = self.config.cni_socket.parent / fallback.FILE_NAME
            await asyncio.to_thread(fallback.remove, stale)
            return
        while True:
            await self._fallback.wait()
            self._fallback.clear()
            names = self.pods.fallback_namespaces()
            if names is None or names == self.fallback_written:
                continue
            try:
                await asyncio.to_thread(self._write_fallback, path, names)
            except (OSError, ValueError) as exc:
                self.fallback_error = f"{path}: {exc}"
                log.warning("cannot write the CNI fallback list %s", self.fallback_error)
                await asyncio.sleep(1.0)
                self._fallback.set()
                continue
            if self.fallback_error is not None or self.fallback_written is None:
                log.info("CNI fallback list %s: %d namespaces", path, len(names))
            self.fallback_written, self.fallback_error = names, None

    def _write_fallback(self, path: Path, names: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fallback.write(path, fallback.render(self.node, names))

    # ---- annotations ---------------------------------------------------------------------

    async def annotate_loop(self) -> None:
        while True:
            await self._annotate.wait()
            self._annotate.clear()
            agent = self.agent
            if agent is None or not self.pods.synced:
                continue
            pods: dict[tuple[str, str], PodRaw] = {}
            for w in self.pods.workloads.values():
                p = self.pods.pod(w.namespace, w.name)
                if p is not None:
                    pods[(w.namespace, w.name)] = p
            for namespace, name, value in annotation_changes(
                pods, self.pods.workloads, agent.redirected
            ):
                try:
                    await asyncio.to_thread(
                        self.api.annotate_pod, namespace, name, REDIRECTION_ANNOTATION, value
                    )
                except AgentError as exc:
                    self.annotation_errors += 1
                    self.metrics.annotation_errors.inc()
                    log.warning("%s", exc)
                    await asyncio.sleep(1.0)
                    self._annotate.set()
                    break

    # ---- the CNI plugin's backend -----------------------------------------------------------

    async def _pod_for(self, namespace: str, name: str, uid: str | None) -> PodRaw | None:
        pod = self.pods.pod(namespace, name)
        cached_uid = ((pod or {}).get("metadata") or {}).get("uid")
        if pod is None or (uid is not None and cached_uid != uid):
            pod = cast(PodRaw | None, await asyncio.to_thread(self.api.get_pod, namespace, name))
        return pod

    async def _ns_labels(self, namespace: str) -> dict[str, str]:
        labels = self.pods.namespace_labels(namespace)
        if labels is not None:
            return labels
        raw: dict[str, Any] | None = await asyncio.to_thread(self.api.get_namespace, namespace)
        found = ((raw or {}).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in found.items()}

    async def cni_add(
        self,
        namespace: str,
        name: str,
        uid: str | None,
        container_id: str,
        netns: str,
        ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
    ) -> str:
        """Redirect a new pod sandbox before its containers start. Returns what was done (for
        the log); raises AgentError with the reason when the sandbox must fail."""
        pod = await self._pod_for(namespace, name, uid)
        if pod is None:
            raise AgentError(
                f"pod {namespace}/{name} is not known to the API server (yet); retry"
            )
        meta = pod.get("metadata") or {}
        pod_uid = str(meta.get("uid", ""))
        if uid is not None and pod_uid != uid:
            raise AgentError(
                f"pod {namespace}/{name} has uid {pod_uid}, the runtime says {uid}; retry"
            )
        if (pod.get("spec") or {}).get("nodeName") not in (None, self.node):
            raise AgentError(
                f"pod {namespace}/{name} is scheduled on {pod['spec'].get('nodeName')}, "
                f"not on this node ({self.node})"
            )
        if not pod_enrolled(pod, await self._ns_labels(namespace)):
            return "not enrolled"
        v4 = [ip for ip in ips if isinstance(ip, ipaddress.IPv4Address)]
        if not v4:
            raise AgentError(
                f"pod {namespace}/{name}: the previous CNI result has no IPv4 address; nodemesh "
                "redirects IPv4 pods only"
            )
        agent = self.agent
        if agent is None:
            raise AgentError("the node agent is still starting; retry")
        self.pods.cni_added(pod_uid, CniPod(container_id, netns, v4[0]))
        agent.notify()
        await agent.wait_redirected(pod_uid, netns, CNI_ADD_TIMEOUT_SECONDS)
        return "redirected"

    def cni_del(self, uid: str | None, container_id: str) -> None:
        self.pods.cni_deleted(uid, container_id)
        if self.agent is not None:
            self.agent.notify()

    def tasks(self, stop: asyncio.Event) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The coroutines to run in the agent's TaskGroup (the watches run on threads)."""
        server = CniServer(
            str(self.config.cni_socket), CniBackendImpl(self), metrics=self.metrics
        )
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("kube-netns-scan", self.scan_loop()),
            ("kube-annotate", self.annotate_loop()),
            ("cni-fallback", self.fallback_loop()),
            ("cni-server", server.serve(stop)),
        ]
        if self.installer is not None:
            installer = self.installer

            async def install() -> None:
                # chain the plugin only once its socket answers: a pod created in between
                # would otherwise fail its sandbox once for nothing
                await server.ready.wait()
                await installer.run(stop)

            tasks.append(("cni-install", install()))
        return tasks

    async def uninstall(self) -> None:
        """Remove the CNI plugin and its config entry (the DaemonSet is being deleted)."""
        if self.config.cni_fallback_file is not None:
            await asyncio.to_thread(fallback.remove, self.config.cni_fallback_file)
        if self.installer is None:
            return
        report = await asyncio.to_thread(self.installer.uninstall)
        for refused in report.refused:
            log.error("uninstall: %s: %s", refused.path, refused.reason)

    # ---- shutdown -------------------------------------------------------------------------

    async def uninstalling(self) -> bool:
        """True if our DaemonSet is gone or being deleted (an uninstall, not a restart)."""
        ns, name = self.config.pod_namespace, self.config.pod_name
        if ns is None or name is None:
            return False
        try:
            me = await asyncio.to_thread(self.api.get_pod, ns, name)
            owners = [
                o for o in ((me or {}).get("metadata") or {}).get("ownerReferences") or []
                if o.get("kind") == "DaemonSet"
            ]
            if not owners:
                return False
            ds = await asyncio.to_thread(self.api.get_daemonset, ns, str(owners[0].get("name")))
        except AgentError as exc:
            log.warning("cannot tell an uninstall from a restart (%s): leaving pods as they are",
                        exc)
            return False
        return ds is None or bool((ds.get("metadata") or {}).get("deletionTimestamp"))

    def status(self) -> dict[str, object]:
        return {
            "source": "kubernetes",
            "synced": self.pods.synced,
            "watches": {
                w.name: {
                    "synced": w.reflector.synced,
                    "resourceVersion": w.reflector.resource_version,
                    "relists": w.relists,
                    "errors": w.errors,
                    "lastError": w.reflector.last_error,
                }
                for w in self._watches
            },
            "lastProcScan": self.last_scan,
            "problems": dict(self.pods.problems),
            "annotationErrors": self.annotation_errors,
            "cniInstalled": None if self.installer is None else self.installer.installed.is_set(),
            "cniFallback": {
                "file": None if self.config.cni_fallback_file is None
                else str(self.config.cni_fallback_file),
                "namespaces": None if self.fallback_written is None
                else len(self.fallback_written),
                "error": self.fallback_error,
            },
        }


class CniBackendImpl:
    """:class:`node_agent.cni.server.CniBackend` over a :class:`KubeNode`."""

    def __init__(self, node: KubeNode) -> None:
        self.node = node

    async def add(self, req: AddRequest) -> None:
        if not req.pod_namespace or not req.pod_name:
            return  # not a Kubernetes pod sandbox: nothing of ours
        try:
            done = await self.node.cni_add(
                req.pod_namespace,
                req.pod_name,
                req.pod_uid,
                req.container_id,
                req.netns,
                req.pod_ips,
            )
        except AgentError as exc:
            retry = "retry" in str(exc)
            raise CniFailure(
                f"nodemesh: pod {req.pod_namespace}/{req.pod_name}: {exc}",
                details=f"node {self.node.node}, netns {req.netns}, sandbox {req.container_id}",
                code=CniCode.TRY_AGAIN_LATER if retry else CniCode.REDIRECTION_FAILED,
            ) from exc
        log.info("cni add %s/%s: %s", req.pod_namespace, req.pod_name, done)

    async def delete(self, req: DelRequest) -> None:
        self.node.cni_del(req.pod_uid, req.container_id)

    async def check(self, req: CheckRequest) -> None:
        if not req.pod_namespace or not req.pod_name:
            return
        agent = self.node.agent
        pod = self.node.pods.pod(req.pod_namespace, req.pod_name)
        if agent is None or pod is None:
            return
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        w = self.node.pods.workloads.get(uid)
        if w is not None and w.enrolled and not agent.redirected(uid):
            raise CniFailure(
                f"nodemesh: pod {req.pod_namespace}/{req.pod_name} is enrolled but not redirected",
                details=(agent.pods[uid].last_error or "") if uid in agent.pods else "",
            )
