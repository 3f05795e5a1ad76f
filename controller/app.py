"""The controller's composition root: builds every part from a frozen :class:`Config` and runs
them in one ``asyncio.TaskGroup``.

Lifecycle: load (or create) the CA and issue the API certificate → listen (API with TLS, ops
plain) → watch the config dir (ready after the first load) → on ``stop``: end every discovery
stream (nodes keep their state and reconnect), stop accepting, let in-flight requests finish
within ``drain_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from controller.auth import NodeTokens
from controller.ca import ROOT_CERT_FILE, ROOT_KEY_FILE, CertificateAuthority
from controller.config import Config, HostPort
from controller.discovery import DiscoveryHub
from controller.errors import StartupError
from controller.localsource import LocalSource
from controller.metrics import Metrics
from controller.server import Api, Ops, tls_server_context
from controller.translate import ConfigIssue, Translation

log = logging.getLogger(__name__)


def load_ca(config: Config) -> CertificateAuthority:
    ca_dir = config.state_dir / "ca"
    if config.ca_cert is None and config.ca_key is None:
        return CertificateAuthority.load_or_create(ca_dir)
    if config.ca_cert is None or config.ca_key is None:
        raise StartupError("--ca-cert and --ca-key go together")
    ca = CertificateAuthority.from_files(config.ca_cert, config.ca_key, config.ca_chain)
    # publish the trust anchor where nodes expect it (CONTRACTS.md), unless a self-managed
    # root lives there: its key must keep matching its certificate
    if (ca_dir / ROOT_KEY_FILE).exists():
        log.warning(
            "event=ca_root_not_published reason=%r dir=%s",
            "a self-managed root key exists there",
            ca_dir,
        )
    else:
        try:
            ca.write_root(ca_dir / ROOT_CERT_FILE)
        except OSError as exc:
            raise StartupError(f"cannot write {ca_dir / ROOT_CERT_FILE}: {exc}") from exc
    log.info("event=ca_loaded operator_supplied=true cert=%s", config.ca_cert)
    return ca


def api_sans(config: Config) -> tuple[str, ...]:
    if config.api_sans:
        return config.api_sans
    sans = ["localhost", "127.0.0.1"]
    host = config.listen.host
    try:
        if not ipaddress.ip_address(host).is_unspecified and host not in sans:
            sans.append(host)
    except ValueError:
        if host and host not in sans:
            sans.append(host)
    return tuple(sans)


class Controller:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.ca = load_ca(config)
        self.hub = DiscoveryHub(self.metrics, root_namespace=config.root_namespace)
        self.tokens = NodeTokens(config.node_tokens_dir, config.poll_interval_seconds)
        self.source = LocalSource(
            config.config_dir,
            config.trust_domain,
            self._on_config,
            self.metrics,
            config.poll_interval_seconds,
            root_namespace=config.root_namespace,
        )
        self.api_address: HostPort | None = None
        self.metrics_address: HostPort | None = None
        #: set once both servers listen (their addresses are then known)
        self.listening = asyncio.Event()

    def _on_config(self, translation: Translation) -> None:
        self.hub.update(
            translation.workloads,
            translation.services,
            translation.authorization_policies,
            translation.peer_authentications,
        )

    def ready(self) -> bool:
        return self.source.loaded

    def config_errors(self) -> tuple[ConfigIssue, ...]:
        return self.source.errors

    async def _start_site(
        self, app: web.Application, where: HostPort, ssl_on: bool
    ) -> tuple[web.AppRunner, HostPort]:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.config.drain_timeout_seconds
        )
        await runner.setup()
        ctx = None
        if ssl_on:
            cert, key = self.ca.write_server_cert(
                self.config.state_dir / "tls", api_sans(self.config)
            )
            ctx = tls_server_context(cert, key)
        site = web.TCPSite(runner, where.host, where.port, ssl_context=ctx)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        addr = runner.addresses[0]
        return runner, HostPort(str(addr[0]), int(addr[1]))

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain."""
        api = Api(
            self.hub,
            self.ca,
            self.tokens,
            self.metrics,
            self.config.trust_domain,
            dt.timedelta(seconds=self.config.workload_cert_ttl_seconds),
            self.ready,
        )
        ops = Ops(
            self.hub,
            self.metrics,
            self.ready,
            self.config_errors,
            lambda: self.source.warnings,
        )
        runners: list[web.AppRunner] = []
        try:
            ops_runner, self.metrics_address = await self._start_site(
                ops.app(), self.config.metrics_listen, ssl_on=False
            )
            runners.append(ops_runner)
            api_runner, self.api_address = await self._start_site(
                api.app(), self.config.listen, ssl_on=True
            )
            runners.append(api_runner)
            log.info(
                "event=controller_listening api=%s metrics=%s epoch=%s config_dir=%s",
                self.api_address,
                self.metrics_address,
                self.hub.epoch,
                self.config.config_dir,
            )
            self.listening.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.source.run(stop), name="controller-config-watch")
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
