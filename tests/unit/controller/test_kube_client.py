"""The raw JSON edge over the kubernetes client: configuration and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import KubeError, StartupError
from controller.kube.client import PODS, KubeClient, load_api_client

from .kubehelpers import fake_api, kube_client


def test_client_configuration_errors_say_what_to_pass(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(StartupError, match="--kubeconfig"):
        load_api_client(bad)


async def test_errors_carry_status_and_the_servers_message(tmp_path: Path) -> None:
    async with fake_api() as api:
        api.add_token("limited-token-0123456789", username="limited", allow=[("get", "pods")])
        client = kube_client(api, tmp_path / "kc", token="limited-token-0123456789")
        try:
            assert client.get(PODS.namespaced_path("default", "nope"), "get pod") is None
            with pytest.raises(KubeError) as info:
                client.list_page(PODS, 10)
            assert info.value.status == 403
            assert "list pods: 403 Forbidden" in str(info.value)
            assert 'cannot list resource "pods"' in str(info.value)
        finally:
            client.close()
        port = api.url.rsplit(":", 1)[1]
    # the server is gone: no status, and the message names the server
    with pytest.raises(KubeError) as gone:
        await_client = KubeClient(load_api_client(tmp_path / "kc"))
        try:
            await_client.list_page(PODS, 10)
        finally:
            await_client.close()
    assert gone.value.status is None and port in str(gone.value)
