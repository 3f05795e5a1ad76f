"""ztunnel.policy: decisions recorded, established connections re-evaluated on change."""

from __future__ import annotations

import ipaddress

from prometheus_client import CollectorRegistry

from meshapi.discovery import Delta, Snapshot
from meshapi.ids import NodeName, PodUid, SpiffeId
from meshapi.model import Endpoint, Service, ServicePort, Workload
from meshapi.policy import Attributes, AuthorizationPolicy, MtlsMode, PeerAuthentication
from ztunnel.policy import PolicyEngine
from ztunnel.seams import MeshView

SERVER = Workload(PodUid("u1"), "server-1", "default", "server",
                  SpiffeId("cluster.local", "default", "server"), NodeName("n"),
                  ipaddress.IPv4Address("10.0.0.2"), True, (("app", "server"),))
SVC = Service("default", "server", None, (ServicePort(80, 8080, "http"),),
              (Endpoint(SERVER.uid, SERVER.ip),))
CLIENT = SpiffeId("cluster.local", "default", "client")


def attrs(http: bool = False) -> Attributes:
    return Attributes(ipaddress.IPv4Address("10.0.0.1"), SERVER.ip, 8080, peer=CLIENT,
                      http_port=http)


def engine() -> tuple[MeshView, PolicyEngine]:
    view = MeshView()
    view.changed(view.state.apply(Snapshot("e", 1, (SERVER,), (SVC,))))
    return view, PolicyEngine(view, CollectorRegistry(), l7=True)


def deny(spec_rules: list[object]) -> AuthorizationPolicy:
    return AuthorizationPolicy.from_spec("default", "d", {"action": "DENY", "rules": spec_rules})


def test_new_deny_closes_established_connection() -> None:
    view, eng = engine()
    closed: list[str] = []
    assert eng.check(SERVER, attrs(), "connection").allowed
    eng.track("c1", SERVER, attrs(), closed.append)
    view.changed(view.state.apply(Delta("e", 2, upsert_authorization_policies=(
        deny([{"from": [{"source": {"namespaces": ["other"]}}]}]),))))
    assert closed == [] and eng.tracked == 1
    view.changed(view.state.apply(Delta("e", 3, upsert_authorization_policies=(deny([{}]),))))
    assert len(closed) == 1 and "default/d" in closed[0] and eng.tracked == 0


def test_l7_rules_close_plain_connections_but_not_l7_ones() -> None:
    view, eng = engine()
    closed: list[str] = []
    eng.track("plain", SERVER, attrs(http=True), lambda r: closed.append("plain"))
    eng.track("l7", SERVER, attrs(http=True), lambda r: closed.append("l7"), l7=True)
    view.changed(view.state.apply(Delta("e", 2, upsert_authorization_policies=(
        deny([{"to": [{"operation": {"paths": ["/admin"]}}]}]),))))
    assert closed == ["plain"]


def test_http_port_and_mtls_mode() -> None:
    view, eng = engine()
    assert eng.is_http_port(SERVER, 8080) and not eng.is_http_port(SERVER, 9090)
    assert eng.mtls_mode(SERVER, 8080) is MtlsMode.STRICT
    view.changed(view.state.apply(Delta("e", 2, upsert_peer_authentications=(
        PeerAuthentication.from_spec("default", "p", {"mtls": {"mode": "PERMISSIVE"}}),))))
    assert eng.mtls_mode(SERVER, 8080) is MtlsMode.PERMISSIVE
    assert not PolicyEngine(view, CollectorRegistry()).is_http_port(SERVER, 8080)
