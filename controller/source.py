"""What the controller needs from a configuration source (:class:`ConfigSource`), and the
bookkeeping every source shares after :func:`controller.translate.translate` (error and warning
reporting, metrics).

Implementations: :class:`controller.localsource.LocalSource` (a directory of YAML files) and
:class:`controller.kube.source.KubeSource` (the Kubernetes API). Both hand each new
:class:`~controller.translate.Translation` to the ``on_change`` callback on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from controller.metrics import Metrics
from controller.translate import ConfigIssue

log = logging.getLogger(__name__)


class ConfigSource(Protocol):
    @property
    def loaded(self) -> bool:
        """True once the first complete configuration was translated (readiness)."""
        ...

    @property
    def errors(self) -> tuple[ConfigIssue, ...]: ...

    @property
    def warnings(self) -> tuple[ConfigIssue, ...]: ...

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set."""
        ...

    def status(self) -> Mapping[str, Any]:
        """For ``/debug/status``: ``{"source": name, ...}``."""
        ...


class IssueLog:
    """Logs and counts configuration errors and policy warnings as they appear and go."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.errors: tuple[ConfigIssue, ...] = ()
        self.warnings: tuple[ConfigIssue, ...] = ()

    def report(self, errors: tuple[ConfigIssue, ...], warnings: tuple[ConfigIssue, ...]) -> None:
        before, after = set(self.errors), set(errors)
        for issue in sorted(after - before):
            self._metrics.config_rejections.inc()
            log.warning("event=config_rejected %s", issue)
        for issue in sorted(before - after):
            log.info("event=config_error_resolved %s", issue)
        self.errors = errors
        self._metrics.config_errors.set(len(errors))
        for warning in sorted(set(warnings) - set(self.warnings)):
            log.warning("event=policy_warning %s", warning)
        self.warnings = warnings
