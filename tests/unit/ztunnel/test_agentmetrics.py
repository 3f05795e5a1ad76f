"""The node agent's metrics appended to the ztunnel's /metrics: what is accepted (pure), and
what an agent that is down, slow, oversized or answers garbage does to a scrape (nothing but
``nodemesh_agent_scrape_up 0``), over real Unix sockets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from node_agent.metrics import AgentMetrics, MetricsServer
from ztunnel import admin
from ztunnel.agentmetrics import AgentScrape, AgentScrapeError, checked, scrape_budget
from ztunnel.metrics import ConnLabels, Metrics

GOOD = (
    b"# HELP nodemesh_agent_zds_connected 1 while connected\n"
    b"# TYPE nodemesh_agent_zds_connected gauge\n"
    b"nodemesh_agent_zds_connected 1.0\n"
    b"# HELP nodemesh_agent_pods pods\n"
    b"# TYPE nodemesh_agent_pods gauge\n"
    b'nodemesh_agent_pods{state="redirected"} 3.0\n'
)
TEXT = CONTENT_TYPE_LATEST
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Parse a whole exposition as Prometheus would; a family twice is an error."""
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    names = []
    for f in text_string_to_metric_families(text):
        names.append(f.name)
        out[f.name] = [(s.name, dict(s.labels), s.value) for s in f.samples]
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    assert not dup, f"metric families exported twice: {dup}"
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    for samples in families(text).values():
        for sample_name, sample_labels, v in samples:
            if sample_name == name and sample_labels == labels:
                return v
    return None


# ---- checked(): what may be appended (pure) -----------------------------------------------------


def test_checked_accepts_the_agents_text_and_ends_it_with_a_newline() -> None:
    assert checked(GOOD, TEXT) == GOOD
    assert checked(GOOD.rstrip(b"\n"), "text/plain; version=0.0.4") == GOOD
    assert checked(b"", TEXT) == b"" and checked(b"\n", TEXT) == b""


def test_checked_accepts_a_real_agent_registry() -> None:
    m = AgentMetrics()
    m.set_info("node-1", "ebpf", "kubernetes")
    m.init_cni()
    m.init_watches()
    m.cni_duration.labels("ADD").observe(0.02)
    body = m.render()
    assert checked(body, TEXT) == body


REFUSED: dict[str, tuple[bytes, str, str, str]] = {
    # name: (body, content type, reason, message part)
    "openmetrics content type": (GOOD, OM, "content_type", "not the text format"),
    "html": (b"<html><body>502</body></html>\n", "text/html", "content_type", "text/html"),
    "no content type": (GOOD, "", "content_type", "not the text format"),
    "openmetrics body": (GOOD + b"# EOF\n", TEXT, "invalid", "# EOF"),
    "garbage": (b"hello world\n", TEXT, "invalid", "do not parse"),
    "html as text": (b"<html>oops</html>\n", TEXT, "invalid", "do not parse"),
    "broken labels": (b'nodemesh_agent_pods{state="x" 1\n', TEXT, "invalid", "do not parse"),
    "not utf-8": (b"nodemesh_agent_info\xff 1\n", TEXT, "invalid", "not UTF-8"),
    "a ztunnel family": (
        b"# TYPE istio_tcp_connections_opened_total counter\n"
        b"istio_tcp_connections_opened_total 1.0\n",
        TEXT, "invalid", "istio_tcp_connections_opened",
    ),
    "an untyped foreign sample": (b"process_cpu_seconds_total 3.0\n", TEXT, "invalid", "process"),
    "the ztunnel's own scrape_up": (
        b"# TYPE nodemesh_agent_scrape_up gauge\nnodemesh_agent_scrape_up 1.0\n",
        TEXT, "invalid", "nodemesh_agent_scrape_up",
    ),
    "a family twice": (GOOD + b"nodemesh_agent_zds_connected 0.0\n", TEXT, "invalid", "twice"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_checked_refuses(name: str) -> None:
    body, content_type, reason, part = REFUSED[name]
    with pytest.raises(AgentScrapeError) as info:
        checked(body, content_type)
    assert info.value.reason == reason
    assert part in str(info.value)


@pytest.mark.parametrize(("header", "budget"), [
    (None, None), ("", None), ("10", 5.0), ("1", 0.5), ("0", None), ("x", None), ("-3", None),
])
def test_scrape_budget_is_half_the_prometheus_timeout(header: str | None,
                                                      budget: float | None) -> None:
    assert scrape_budget(header) == budget


# ---- fake agents on a Unix socket ---------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_agent(path: Path, handler: Handler) -> AsyncIterator[None]:
    """A Unix-socket server running ``handler`` per connection; every handler is cancelled and
    awaited on exit (Python 3.11's Server.wait_closed does not wait for them)."""
    running: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            running.discard(task)

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(raw: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(raw)
        await writer.drain()

    return handler


def http(body: bytes, content_type: str = TEXT, status: str = "200 OK",
         length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {n}\r\n"
            "Connection: close\r\n\r\n").encode() + body


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "agent-metrics.sock"


def scraper(path: Path, **kw: float | int) -> tuple[AgentScrape, Metrics]:
    metrics = Metrics()
    return AgentScrape(path, metrics, **kw), metrics  # type: ignore[arg-type]


def up_and_errors(metrics: Metrics) -> tuple[float | None, dict[str, float]]:
    r = metrics.registry
    errors = {}
    for reason in ("unreachable", "timeout", "status", "too_large", "content_type", "invalid"):
        v = r.get_sample_value("nodemesh_ztunnel_agent_scrape_errors_total", {"reason": reason})
        assert v is not None  # every reason exists from the start
        if v:
            errors[reason] = v
    return r.get_sample_value("nodemesh_agent_scrape_up"), errors


async def test_good_agent_is_appended(sock: Path) -> None:
    s, metrics = scraper(sock)
    async with fake_agent(sock, answering(http(GOOD))):
        assert await s.scrape() == GOOD
    assert up_and_errors(metrics) == (1.0, {})


async def test_agent_down_no_socket_file(sock: Path) -> None:
    s, metrics = scraper(sock)
    assert await s.scrape() == b""
    assert up_and_errors(metrics) == (0.0, {"unreachable": 1.0})


async def test_agent_dead_stale_socket_file(sock: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: a killed agent
    s, metrics = scraper(sock)
    assert await s.scrape() == b""
    assert up_and_errors(metrics) == (0.0, {"unreachable": 1.0})


async def test_agent_that_never_answers_times_out(sock: Path) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.Event().wait()

    s, metrics = scraper(sock, timeout=1.0)
    async with fake_agent(sock, hang):
        started = time.monotonic()
        assert await s.scrape() == b""
        took = time.monotonic() - started
        # a smaller budget (from Prometheus's scrape timeout) wins over the configured one
        started = time.monotonic()
        assert await s.scrape(budget=0.05) == b""
        short = time.monotonic() - started
    assert 1.0 <= took < 5.0 and short < 0.5
    assert up_and_errors(metrics) == (0.0, {"timeout": 2.0})


async def test_agent_that_trickles_its_body_times_out(sock: Path) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(http(b"", length=100000))
        while True:
            writer.write(b"nodemesh_agent_x 1\n")
            await writer.drain()
            await asyncio.sleep(0.02)

    s, metrics = scraper(sock, timeout=0.2)
    async with fake_agent(sock, trickle):
        assert await s.scrape() == b""
    assert up_and_errors(metrics) == (0.0, {"timeout": 1.0})


async def test_oversized_by_content_length(sock: Path) -> None:
    s, metrics = scraper(sock, max_bytes=1000)
    async with fake_agent(sock, answering(http(b"", length=10**9))):
        assert await s.scrape() == b""
    assert up_and_errors(metrics) == (0.0, {"too_large": 1.0})


async def test_oversized_endless_body_without_length(sock: Path) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {TEXT}\r\nConnection: close\r\n\r\n"
                     .encode())
        line = b'nodemesh_agent_pods{state="redirected"} 1.0\n' * 1000
        while True:
            writer.write(line)
            await writer.drain()

    s, metrics = scraper(sock, max_bytes=100_000)
    async with fake_agent(sock, endless):
        assert await s.scrape() == b""
    assert up_and_errors(metrics) == (0.0, {"too_large": 1.0})


@pytest.mark.parametrize(("raw", "reason"), [
    (b"hello, this is not HTTP\r\n\r\n", "invalid"),
    (http(b"boom", status="500 Internal Server Error"), "status"),
    (http(b"not found", status="404 Not Found"), "status"),
    (http(b"hello world\n"), "invalid"),
    (http(GOOD, content_type=OM), "content_type"),
    (http(GOOD, length=len(GOOD) + 50), "invalid"),  # cut short: the connection closes early
])
async def test_garbage_is_left_out(sock: Path, raw: bytes, reason: str) -> None:
    s, metrics = scraper(sock)
    async with fake_agent(sock, answering(raw)):
        assert await s.scrape() == b""
    assert up_and_errors(metrics) == (0.0, {reason: 1.0})


async def test_recovers_when_the_agent_comes_back(sock: Path) -> None:
    s, metrics = scraper(sock)
    assert await s.scrape() == b""
    async with fake_agent(sock, answering(http(GOOD))):
        assert await s.scrape() == GOOD
    assert up_and_errors(metrics) == (1.0, {"unreachable": 1.0})


# ---- the node's /metrics, with a real agent registry served by the agent's MetricsServer --------


Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def node_metrics(metrics: Metrics, agent: AgentScrape | None) -> AsyncIterator[Client]:
    async with TestClient(TestServer(admin.metrics_app(metrics, agent))) as client:
        yield client


async def get_metrics(client: Client, **headers: str) -> str:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return await resp.text()


async def test_node_metrics_merge_the_agents(sock: Path) -> None:
    agent_metrics = AgentMetrics()
    agent_metrics.set_info("node-1", "iptables", "controller")
    agent_metrics.watch_pod_states(lambda: ["redirected", "redirected", "pending"])
    agent_metrics.zds_connected.set(1)
    metrics = Metrics()
    metrics.connection_opened(ConnLabels(reporter="destination"))
    async with (MetricsServer(str(sock), agent_metrics),
                node_metrics(metrics, AgentScrape(sock, metrics)) as client):
        text = await get_metrics(client, **{"X-Prometheus-Scrape-Timeout-Seconds": "10"})
    # one valid exposition: the ztunnel's families, then the agent's, none twice
    fams = families(text)
    assert value(text, "nodemesh_agent_scrape_up") == 1.0
    assert value(text, "nodemesh_agent_pods", state="redirected") == 2.0
    assert value(text, "nodemesh_agent_pods", state="pending") == 1.0
    assert value(text, "nodemesh_agent_pods", state="error") == 0.0
    assert value(text, "nodemesh_agent_zds_connected") == 1.0
    assert value(text, "nodemesh_agent_info", node="node-1", mode="iptables",
                 source="controller") == 1.0
    assert "istio_tcp_connections_opened" in fams
    assert text.index("istio_tcp_connections_opened") < text.index("nodemesh_agent_info")


async def test_node_metrics_without_the_agent_still_answer(sock: Path) -> None:
    metrics = Metrics()
    async with node_metrics(metrics, AgentScrape(sock, metrics)) as client:
        text = await get_metrics(client)
    assert value(text, "nodemesh_agent_scrape_up") == 0.0
    assert value(text, "nodemesh_ztunnel_agent_scrape_errors_total", reason="unreachable") == 1.0
    assert not [n for n in families(text) if n.startswith("nodemesh_agent_")
                and n != "nodemesh_agent_scrape_up"]


async def test_node_metrics_with_a_hung_agent_answer_within_the_budget(sock: Path) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    metrics = Metrics()
    async with (fake_agent(sock, hang),
                node_metrics(metrics, AgentScrape(sock, metrics, timeout=5.0)) as client):
        started = time.monotonic()
        # Prometheus allows 1 s: the agent gets half of it (not its own 5 s), the scrape
        # still succeeds in time
        text = await get_metrics(client, **{"X-Prometheus-Scrape-Timeout-Seconds": "1"})
        took = time.monotonic() - started
    assert 0.5 <= took < 1.0, took
    assert value(text, "nodemesh_agent_scrape_up") == 0.0
    assert value(text, "nodemesh_ztunnel_agent_scrape_errors_total", reason="timeout") == 1.0


async def test_node_metrics_without_an_agent_socket_configured() -> None:
    metrics = Metrics()
    async with node_metrics(metrics, None) as client:
        text = await get_metrics(client)
    assert value(text, "nodemesh_agent_scrape_up") == 0.0
    assert value(text, "nodemesh_ztunnel_agent_scrape_errors_total", reason="unreachable") is None
