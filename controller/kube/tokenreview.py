"""The Kubernetes calls behind :class:`controller.auth.TokenReviewAuthenticator`: create a
TokenReview, read a pod. Blocking (run in worker threads); the token goes only into the
TokenReview request body, never into a log line or an error message."""

from __future__ import annotations

from controller.kube.client import PODS, TOKEN_REVIEWS_PATH, KubeClient


class KubeTokenReviewer:
    def __init__(self, client: KubeClient) -> None:
        self._client = client

    def review(self, token: str, audience: str) -> object:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        answer = self._client.request("POST", TOKEN_REVIEWS_PATH, "create tokenreview", body=body)
        return answer.get("status") if isinstance(answer, dict) else None

    def get_pod(self, namespace: str, name: str) -> object | None:
        return self._client.get(
            PODS.namespaced_path(namespace, name), f"get pod {namespace}/{name}"
        )
