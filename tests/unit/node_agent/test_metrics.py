"""The agent's registry (names, bounded labels, pod states read at scrape time) and the Unix
socket that serves it."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from node_agent.errors import AgentError
from node_agent.metrics import POD_STATES, AgentMetrics, MetricsServer


def names(m: AgentMetrics) -> set[str]:
    return {f.name for f in text_string_to_metric_families(m.render().decode())}


def test_own_registry_and_prefix() -> None:
    a, b = AgentMetrics(), AgentMetrics()
    assert a.registry is not REGISTRY and a.registry is not b.registry
    a.zds_connected.set(1)
    assert b.registry.get_sample_value("nodemesh_agent_zds_connected") == 0
    a.init_cni()
    a.init_watches()
    a.set_info("node-1", "iptables", "kubernetes")
    found = names(a)
    assert found and all(n.startswith("nodemesh_agent_") for n in found), found
    # the ztunnel exports this one itself (ztunnel.agentmetrics refuses it from the agent)
    assert "nodemesh_agent_scrape_up" not in found
    assert {"nodemesh_agent_cni_requests", "nodemesh_agent_cni_request_duration_seconds",
            "nodemesh_agent_pods", "nodemesh_agent_redirection_errors",
            "nodemesh_agent_zds_connected", "nodemesh_agent_watch_relists",
            "nodemesh_agent_watch_errors", "nodemesh_agent_info"} <= found


def test_cni_duration_buckets_span_a_millisecond_to_a_minute() -> None:
    m = AgentMetrics()
    m.cni_duration.labels("ADD").observe(0.0005)
    m.cni_duration.labels("ADD").observe(45)
    r = m.registry

    def bucket(le: str) -> float | None:
        return r.get_sample_value("nodemesh_agent_cni_request_duration_seconds_bucket",
                                  {"command": "ADD", "le": le})

    assert bucket("0.001") == 1 and bucket("30.0") == 1 and bucket("60.0") == 2


def test_pod_states_read_at_scrape_time_every_state_present() -> None:
    m = AgentMetrics()
    r = m.registry
    for state in POD_STATES:  # no agent yet: every state at 0
        assert r.get_sample_value("nodemesh_agent_pods", {"state": state}) == 0
    pods = ["redirected", "redirected", "error"]
    m.watch_pod_states(lambda: pods)
    assert r.get_sample_value("nodemesh_agent_pods", {"state": "redirected"}) == 2
    pods[:] = ["pending"]
    assert r.get_sample_value("nodemesh_agent_pods", {"state": "redirected"}) == 0
    assert r.get_sample_value("nodemesh_agent_pods", {"state": "pending"}) == 1
    assert r.get_sample_value("nodemesh_agent_pods", {"state": "removed"}) == 0


def test_info_has_one_series() -> None:
    m = AgentMetrics()
    m.set_info("node-1", "iptables", "controller")
    m.set_info("node-1", "ebpf", "controller")
    fams = [f for f in text_string_to_metric_families(m.render().decode())
            if f.name == "nodemesh_agent_info"]
    assert [(s.labels, s.value) for s in fams[0].samples] == [
        ({"node": "node-1", "mode": "ebpf", "source": "controller"}, 1.0)]


# ---- the Unix socket ----------------------------------------------------------------------------


async def get(path: str, url: str = "/metrics") -> tuple[int, str, str]:
    async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as s,
                s.get(f"http://agent{url}") as resp):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def exists(path: str) -> bool:
    return os.path.exists(path)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "agent-metrics.sock")


async def test_serves_the_registry_on_a_0600_socket(sock_path: str) -> None:
    m = AgentMetrics()
    m.zds_connected.set(1)
    async with MetricsServer(sock_path, m) as srv:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert srv.ready.is_set()
        status, ctype, body = await get(sock_path)
        assert status == 200 and ctype == CONTENT_TYPE_LATEST
        assert "nodemesh_agent_zds_connected 1.0\n" in body
        m.zds_connected.set(0)  # read on each request
        assert "nodemesh_agent_zds_connected 0.0\n" in (await get(sock_path))[2]
        assert (await get(sock_path, "/config"))[0] == 404
    assert not exists(sock_path)


async def test_stale_socket_replaced_live_one_refused(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # a killed agent's socket file
    async with MetricsServer(sock_path, AgentMetrics()):
        assert (await get(sock_path))[0] == 200
        with pytest.raises(AgentError, match="another process serves"):
            await MetricsServer(sock_path, AgentMetrics()).start()
        assert (await get(sock_path))[0] == 200  # the refused one left ours alone


def test_non_socket_file_is_not_replaced(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path))
    Path(sock_path).write_text("keep me")
    with pytest.raises(AgentError, match=r"exists and is not a socket.*--metrics-socket"):
        asyncio.run(MetricsServer(sock_path, AgentMetrics()).start())
    assert Path(sock_path).read_text() == "keep me"


async def test_serve_until_stop(sock_path: str) -> None:
    stop = asyncio.Event()
    srv = MetricsServer(sock_path, AgentMetrics())
    task = asyncio.create_task(srv.serve(stop))
    await srv.ready.wait()
    assert (await get(sock_path))[0] == 200
    stop.set()
    await task
    assert not exists(sock_path) and not srv.ready.is_set()
