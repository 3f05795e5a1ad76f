"""meshctl status rendering (pure)."""

from __future__ import annotations

from meshctl import status


def test_render_lists_errors_warnings_nodes_and_redirection() -> None:
    controller = {
        "ready": True, "version": 7, "epoch": "e", "workloads": 5, "services": 1,
        "authorizationPolicies": 1, "peerAuthentications": 0,
        "configErrors": [{"file": "/c/p.yaml", "object": "AuthorizationPolicy default/a",
                          "field": "spec.action", "message": "unknown action 'X'"}],
        "policyWarnings": [{"file": "/c/q.yaml", "object": "AuthorizationPolicy default/b",
                            "field": "spec.rules[0].to[0].operation",
                            "message": "warning: L7 attributes cannot apply"}],
        "connectedNodes": [{"node": "node-1"}, {"node": "node-2"}],
    }
    agents = [{"node": "node-1", "mode": "iptables", "ztunnel": {"connected": True},
               "pods": [{"status": "redirected"}, {"status": "redirected"}]}]
    out = status.render(controller, agents)
    assert "version=7" in out
    assert "/c/p.yaml: AuthorizationPolicy default/a: spec.action: unknown action 'X'" in out
    assert "policy warnings: 1" in out
    assert "connected nodes: node-1, node-2" in out
    assert "node node-1: redirection=iptables ztunnel=connected pods: redirected=2" in out
