"""The controller's composition root: builds every part from a frozen :class:`Config` and runs
them in one ``asyncio.TaskGroup``.

Parts behind protocols, chosen by ``config.source``:

=================  ==============================  =======================================
protocol           local                           kubernetes
=================  ==============================  =======================================
ConfigSource       LocalSource (config dir)        KubeSource (list/watch)
NodeAuthenticator  NodeTokens (token files)        TokenReviewAuthenticator (TokenReview)
CaStore            DirectoryCaStore (state dir)    SecretCaStore (Secret) or FileCaStore
=================  ==============================  =======================================

Lifecycle: (kubernetes: start leader election) → load (or create) the CA and issue the API
certificate → listen (API with TLS, ops plain) → watch the configuration (ready after the first
complete translation); kubernetes: the leader also publishes the root ConfigMap → on ``stop``: end
every discovery stream (nodes keep their state and reconnect), stop accepting, let in-flight
requests finish within ``drain_timeout_seconds``, stop the watches, release the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from controller.auth import (
    NodeAuthenticator,
    NodeTokens,
    ServiceAccountRef,
    TokenReviewAuthenticator,
)
from controller.ca import CertificateAuthority
from controller.castore import CaStore, DirectoryCaStore, FileCaStore
from controller.config import CONTROLLER_SERVICE, SOURCE_KUBERNETES, Config, HostPort
from controller.discovery import DiscoveryHub
from controller.errors import StartupError
from controller.localsource import LocalSource
from controller.metrics import Metrics
from controller.server import Api, Ops, tls_server_context
from controller.source import ConfigSource
from controller.translate import ConfigIssue, Translation

if TYPE_CHECKING:
    from controller.kube.castore import RootPublisher
    from controller.kube.client import KubeClient
    from controller.kube.lease import LeaderElector

log = logging.getLogger(__name__)


def load_ca(config: Config) -> CertificateAuthority:
    """Local mode's CA (kept for callers of the old entry point)."""
    if config.state_dir is None:
        raise StartupError("--state-dir is required with --source local")
    return DirectoryCaStore(
        config.state_dir, config.ca_cert, config.ca_key, config.ca_chain
    ).load_now()


def api_sans(config: Config) -> tuple[str, ...]:
    if config.api_sans:
        return config.api_sans
    sans = ["localhost", "127.0.0.1"]
    if config.source == SOURCE_KUBERNETES:
        svc = CONTROLLER_SERVICE
        ns = config.namespace
        sans += [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
    host = config.listen.host
    try:
        if not ipaddress.ip_address(host).is_unspecified and host not in sans:
            sans.append(host)
    except ValueError:
        if host and host not in sans:
            sans.append(host)
    return tuple(sans)


class Controller:
    def __init__(self, config: Config, *, kube_client: KubeClient | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.hub = DiscoveryHub(self.metrics, root_namespace=config.root_namespace,
                                path_normalization=config.path_normalization)
        #: see Translation.scheduled: who may request which identity
        self.scheduled: frozenset[tuple[str, str, str]] = frozenset()
        self.ca: CertificateAuthority | None = None
        self.kube: KubeClient | None = None
        self.elector: LeaderElector | None = None
        self.publisher: RootPublisher | None = None
        self.authenticator: NodeAuthenticator
        self.source: ConfigSource
        self.ca_store: CaStore
        if config.source == SOURCE_KUBERNETES:
            self._build_kubernetes(kube_client)
        else:
            self._build_local()
        self.api_address: HostPort | None = None
        self.metrics_address: HostPort | None = None
        #: set once both servers listen (their addresses are then known)
        self.listening = asyncio.Event()

    def _build_local(self) -> None:
        config = self.config
        if config.config_dir is None or config.state_dir is None or config.node_tokens_dir is None:
            raise StartupError(
                "--source local needs --config-dir, --state-dir and --node-tokens-dir"
            )
        store = DirectoryCaStore(config.state_dir, config.ca_cert, config.ca_key, config.ca_chain)
        self.ca_store = store
        self.ca = store.load_now()  # local mode fails at construction, as it always did
        self.authenticator = NodeTokens(config.node_tokens_dir, config.poll_interval_seconds)
        self.source = LocalSource(
            config.config_dir,
            config.trust_domain,
            self._on_config,
            self.metrics,
            config.poll_interval_seconds,
            root_namespace=config.root_namespace,
        )

    def _build_kubernetes(self, kube_client: KubeClient | None) -> None:
        # the kubernetes client is imported only in this mode (it is slow to import)
        from controller.kube.castore import SecretCaStore
        from controller.kube.client import KubeClient, load_api_client
        from controller.kube.lease import LeaderElector
        from controller.kube.source import KubeSource
        from controller.kube.tokenreview import KubeTokenReviewer

        config = self.config
        if not config.pod_name:
            raise StartupError("--source kubernetes needs --pod-name (env POD_NAME)")
        try:
            node_sa = ServiceAccountRef.parse(config.node_service_account)
        except ValueError as exc:
            raise StartupError(f"--node-service-account: {exc}") from exc
        kube = kube_client or KubeClient(load_api_client(config.kubeconfig))
        self.kube = kube
        self.elector = LeaderElector(
            kube,
            config.namespace,
            config.leader_lease,
            config.pod_name,
            self.metrics,
            lease_duration=config.lease_duration_seconds,
            renew_interval=config.lease_renew_seconds,
        )
        if config.ca_cert is not None and config.ca_key is not None:
            self.ca_store = FileCaStore(config.ca_cert, config.ca_key, config.ca_chain)
        else:
            self.ca_store = SecretCaStore(
                kube,
                config.namespace,
                config.ca_secret,
                self.elector,
                wait_timeout=config.ca_wait_seconds,
            )
        self.authenticator = TokenReviewAuthenticator(
            KubeTokenReviewer(kube), config.token_audience, node_sa, self.metrics
        )
        self.source = KubeSource(
            kube,
            config.trust_domain,
            self._on_config,
            self.metrics,
            root_namespace=config.root_namespace,
            watch_timeout=config.watch_timeout_seconds,
        )

    @property
    def tokens(self) -> NodeAuthenticator:
        return self.authenticator

    def _on_config(self, translation: Translation) -> None:
        self.scheduled = translation.scheduled
        self.hub.update(
            translation.workloads,
            translation.services,
            translation.authorization_policies,
            translation.peer_authentications,
        )

    def ready(self) -> bool:
        return self.ca is not None and self.source.loaded

    def config_errors(self) -> tuple[ConfigIssue, ...]:
        return self.source.errors

    def status(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {"source": self.source.status()}
        if self.elector is not None:
            out["leader"] = self.elector.status()
        if self.publisher is not None:
            out["caRootConfigMap"] = {
                "name": self.publisher.where,
                "published": self.publisher.published,
                "lastError": self.publisher.last_error or None,
            }
        return out

    async def _start_site(
        self, app: web.Application, where: HostPort, tls_dir: Path | None
    ) -> tuple[web.AppRunner, HostPort]:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.config.drain_timeout_seconds
        )
        await runner.setup()
        ctx = None
        if tls_dir is not None:
            assert self.ca is not None
            cert, key = self.ca.write_server_cert(tls_dir, api_sans(self.config))
            ctx = tls_server_context(cert, key)
        site = web.TCPSite(runner, where.host, where.port, ssl_context=ctx)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        addr = runner.addresses[0]
        return runner, HostPort(str(addr[0]), int(addr[1]))

    @contextlib.asynccontextmanager
    async def _tls_dir(self) -> AsyncIterator[Path]:
        if self.config.state_dir is not None:
            yield self.config.state_dir / "tls"
            return
        with tempfile.TemporaryDirectory(prefix="nodemesh-controller-tls-") as tmp:
            yield Path(tmp)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain."""
        if self.elector is None:
            await self._serve(stop)
            return
        # the elector runs longer than everything else: the CA needs it before anything
        # starts, and the Lease is released only after the drain
        elector_stop = asyncio.Event()
        elector = asyncio.create_task(self.elector.run(elector_stop), name="controller-leader")
        try:
            await self._serve(stop)
        finally:
            elector_stop.set()
            await elector
            if self.kube is not None:
                self.kube.close()

    async def _load_ca(self, stop: asyncio.Event) -> CertificateAuthority | None:
        """The CA, or None if ``stop`` came first (a follower may wait for the Secret)."""
        if self.ca is not None:
            return self.ca
        loading = asyncio.ensure_future(self.ca_store.load())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (loading, stopping):
                if not f.done():
                    f.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await f
        return loading.result() if not loading.cancelled() else None

    async def _serve(self, stop: asyncio.Event) -> None:
        ops = Ops(
            self.hub,
            self.metrics,
            self.ready,
            self.config_errors,
            lambda: self.source.warnings,
            self.status,
        )
        runners: list[web.AppRunner] = []
        try:
            # operators' endpoints first: /healthz answers (and /readyz says why not ready)
            # while a follower waits for the leader to create the CA
            ops_runner, self.metrics_address = await self._start_site(
                ops.app(), self.config.metrics_listen, None
            )
            runners.append(ops_runner)
            self.ca = await self._load_ca(stop)
            if self.ca is None:
                return
            if self.kube is not None and self.elector is not None:
                from controller.kube.castore import RootPublisher

                self.publisher = RootPublisher(
                    self.kube,
                    self.config.namespace,
                    self.config.ca_root_configmap,
                    self.elector,
                    self.ca.root_pem(),
                    resync_seconds=self.config.ca_root_resync_seconds,
                )
            api = Api(
                self.hub,
                self.ca,
                self.authenticator,
                self.metrics,
                self.config.trust_domain,
                dt.timedelta(seconds=self.config.workload_cert_ttl_seconds),
                self.ready,
                lambda: self.scheduled,
            )
            async with self._tls_dir() as tls_dir:
                api_runner, self.api_address = await self._start_site(
                    api.app(), self.config.listen, tls_dir
                )
                runners.append(api_runner)
            log.info(
                "event=controller_listening api=%s metrics=%s epoch=%s source=%s config_dir=%s",
                self.api_address,
                self.metrics_address,
                self.hub.epoch,
                self.config.source,
                self.config.config_dir,
            )
            self.listening.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.source.run(stop), name="controller-config-watch")
                if self.publisher is not None:
                    tg.create_task(self.publisher.run(stop), name="controller-ca-root-publisher")
                await stop.wait()
        finally:
            log.info("event=controller_draining subscribers=%d", len(self.hub.subscriptions))
            self.hub.close()
            for runner in reversed(runners):
                await runner.cleanup()
            log.info("event=controller_stopped")


async def serve(config: Config, stop: asyncio.Event) -> None:
    await Controller(config).serve(stop)


async def _main(config: Config) -> int:
    controller = Controller(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.serve(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(config: Config) -> int:
    """Run the controller until SIGTERM/SIGINT; returns the exit status (0 after a drain).
    Raises :class:`~controller.errors.StartupError` when it cannot start."""
    main: Coroutine[Any, Any, int] = _main(config)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)
