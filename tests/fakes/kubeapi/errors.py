"""Errors of the fake API server.

`ApiError` is what a request handler raises to answer with a Kubernetes ``Status`` body; its
fields map one to one onto that body, so the `kubernetes` client raises ``ApiException`` with the
same ``status`` and ``reason``. `FakeKubeApiError` is for misuse of the test hooks (a YAML
document of a kind the fake does not serve, an object without a name): those are bugs in the
test, reported with what to fix.
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceType

#: HTTP status → the ``reason`` a real API server puts into a Status of that code
REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class FakeKubeApiError(Exception):
    """A test used the fake wrongly; the message says what to change."""


class ApiError(Exception):
    """Answer the request with a ``Status`` failure (``kind: Status``, ``status: Failure``)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    return {"name": name, "group": rt.group, "kind": rt.plural}


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.qualified} "{name}" not found', details=_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'{rt.qualified} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(rt, name),
    )


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        reason="Conflict",
        details=_details(rt, name),
    )


def invalid(kind: str, name: str, field: str, detail: str) -> ApiError:
    return ApiError(
        422,
        f'{kind} "{name}" is invalid: {field}: {detail}',
        details={
            "name": name,
            "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def expired(message: str) -> ApiError:
    return ApiError(410, message, reason="Expired")
