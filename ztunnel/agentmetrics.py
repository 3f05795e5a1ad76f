"""The node agent's metrics, appended to the node's one Prometheus endpoint (15020).

The agent opens no port: it serves ``GET /metrics`` on a Unix socket (``--agent-metrics-socket``
here, ``--metrics-socket`` there). On every scrape of ``/metrics`` the ztunnel reads that socket
and appends what it got to its own exposition, and sets ``nodemesh_agent_scrape_up`` to 1, or to
0 (with ``nodemesh_ztunnel_agent_scrape_errors_total{reason}`` counting why) when it got nothing
it could use.

Invariants:

* An agent that is down, slow, or answers garbage never makes ``/metrics`` fail or hang: each
  read is bounded in time (``timeout``, and at most half the scrape timeout Prometheus announces)
  and in size (``max_bytes``); whatever goes wrong, the agent's part is left out, whole.
* What is appended is always valid together with the ztunnel's own text: the classic text
  format (not OpenMetrics), parseable, every family named ``nodemesh_agent_*`` and none twice,
  and never ``nodemesh_agent_scrape_up`` (the ztunnel's own). Anything else is refused whole:
  half an exposition is worse than none.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ztunnel.metrics import Metrics

log = logging.getLogger("ztunnel.agentmetrics")

AGENT_PREFIX: Final = "nodemesh_agent_"
#: the one ``nodemesh_agent_*`` family the ztunnel exports itself
SCRAPE_UP: Final = "nodemesh_agent_scrape_up"
DEFAULT_TIMEOUT_SECONDS: Final = 1.0
#: the agent's exposition is a few KiB (bounded label sets); this is far above it
DEFAULT_MAX_BYTES: Final = 1 << 20
#: label values of ``nodemesh_ztunnel_agent_scrape_errors_total{reason}``
REASONS: Final = ("unreachable", "timeout", "status", "too_large", "content_type", "invalid")


class AgentScrapeError(Exception):
    """The agent's answer cannot be appended; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, msg: str) -> None:
        assert reason in REASONS, reason
        super().__init__(msg)
        self.reason = reason


def checked(body: bytes, content_type: str) -> bytes:
    """``body`` if it can be appended to the ztunnel's own exposition, ending in a newline;
    else :class:`AgentScrapeError`. Pure."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "text/plain":
        raise AgentScrapeError(
            "content_type", f"the agent answered {content_type!r}, not the text format"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AgentScrapeError("invalid", f"the agent's metrics are not UTF-8: {exc}") from exc
    if not text.strip():
        return b""
    if any(line.strip() == "# EOF" for line in text.splitlines()):
        raise AgentScrapeError("invalid", "the agent's metrics are OpenMetrics (# EOF)")
    seen: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            names = {family.name, *(s.name for s in family.samples)}
            bad = sorted(n for n in names if not n.startswith(AGENT_PREFIX) or n == SCRAPE_UP)
            if bad:
                raise AgentScrapeError(
                    "invalid", f"the agent exports {bad[0]!r}, which is not its to export"
                )
            if family.name in seen:
                raise AgentScrapeError(
                    "invalid", f"the agent's metrics have family {family.name!r} twice"
                )
            seen.add(family.name)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        # the parser's ways of saying "not the text format"
        raise AgentScrapeError("invalid", f"the agent's metrics do not parse: {exc}") from exc
    return body if body.endswith(b"\n") else body + b"\n"


async def fetch(path: Path, max_bytes: int) -> tuple[bytes, str]:
    """(body, content type) of ``GET /metrics`` on the agent's socket. No timeout of its own:
    the caller bounds it."""
    connector = aiohttp.UnixConnector(path=str(path), force_close=True)
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(
                "http://nodemesh-agent/metrics",
                headers={"Accept": "text/plain;version=0.0.4"},
                allow_redirects=False,
            ) as resp,
        ):
            if resp.status != 200:
                raise AgentScrapeError("status", f"the agent answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise AgentScrapeError(
                    "too_large", f"the agent's metrics are {resp.content_length} bytes, "
                    f"more than {max_bytes}"
                )
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise AgentScrapeError(
                        "too_large", f"the agent's metrics are more than {max_bytes} bytes"
                    )
            return bytes(body), resp.headers.get("Content-Type", "")
    except aiohttp.ClientConnectorError as exc:
        raise AgentScrapeError(
            "unreachable", f"cannot connect to the agent at {path}: {exc.os_error}"
        ) from exc
    except aiohttp.ClientError as exc:
        raise AgentScrapeError("invalid", f"bad answer from the agent at {path}: {exc}") from exc


@dataclass
class AgentScrape:
    """Reads the agent's metrics for each scrape of the node endpoint; keeps ``scrape_up``."""

    path: Path
    metrics: Metrics
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    max_bytes: int = DEFAULT_MAX_BYTES
    #: the last failure's reason ("" while it works), to log changes only, not every scrape
    _last: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for reason in REASONS:
            self.metrics.agent_scrape_errors.labels(reason)

    async def scrape(self, budget: float | None = None) -> bytes:
        """The agent's exposition to append, or ``b""``. Never raises (but cancellation),
        returns within ``min(timeout, budget)`` seconds."""
        timeout = self.timeout if budget is None else max(0.05, min(self.timeout, budget))
        try:
            async with asyncio.timeout(timeout):
                body, content_type = await fetch(self.path, self.max_bytes)
            out = checked(body, content_type)
        except TimeoutError:
            self._failed("timeout", f"the agent at {self.path} did not answer within "
                                    f"{timeout:g}s")
            return b""
        except AgentScrapeError as exc:
            self._failed(exc.reason, str(exc))
            return b""
        self.metrics.agent_scrape_up.set(1)
        if self._last:
            log.info("node agent metrics at %s are back", self.path)
        self._last = ""
        return out

    def _failed(self, reason: str, msg: str) -> None:
        self.metrics.agent_scrape_up.set(0)
        self.metrics.agent_scrape_errors.labels(reason).inc()
        if reason != self._last:
            log.warning("node agent metrics left out of /metrics: %s", msg)
        self._last = reason


def scrape_budget(header: str | None) -> float | None:
    """Half the scrape timeout Prometheus announces (``X-Prometheus-Scrape-Timeout-Seconds``),
    so that the ztunnel's own metrics still make it in time; None without a usable header."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds / 2 if seconds > 0 else None
