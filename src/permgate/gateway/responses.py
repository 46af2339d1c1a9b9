"""The JSON answers of the listeners that decide requests (the gateway and the decision
service): one error shape, ``{"error", "reason", "request_id"}``, plus what a 401 and a
403 add. Both listeners answer through these functions, so their bodies cannot drift."""

from __future__ import annotations

from typing import Final

import orjson
from aiohttp import web

from permgate.core.decision import Decision
from permgate.core.reasons import Reason
from permgate.gateway.authn import AuthFailure

__all__ = ["JSON", "closing", "forbidden", "json_response", "refusal", "unauthenticated"]

JSON: Final = "application/json"


def json_response(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)


def refusal(status: int, error: str, reason: str, request_id: str) -> web.Response:
    return json_response(status, {"error": error, "reason": reason, "request_id": request_id})


def closing(response: web.Response) -> web.Response:
    """The answer ends its connection, and says so (HTTP/1.0 clients included)."""
    response.headers["Connection"] = "close"
    response.force_close()
    return response


def unauthenticated(failure: AuthFailure, request_id: str) -> web.Response:
    return json_response(
        401,
        {"error": "unauthenticated", "reason": failure.reason, "request_id": request_id},
        {"WWW-Authenticate": failure.www_authenticate},
    )


def forbidden(decision: Decision, request_id: str) -> web.Response:
    body: dict[str, object] = {
        "error": "forbidden",
        "reason": decision.reason,
        "missing_permissions": list(decision.missing),
        "request_id": request_id,
    }
    if decision.reason == Reason.MISSING_PERMISSION and decision.any_of:
        body["any_of"] = list(decision.any_of)
    return json_response(403, body)
