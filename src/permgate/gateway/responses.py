"""The JSON answers of the listeners that decide requests (the gateway and the decision
service): one error shape, ``{"error", "reason", "request_id"}``, plus what a 401 and a
403 add. Both listeners answer through these functions, so their bodies cannot drift.

An :class:`Answer` is rendered to bytes once, by :meth:`Answer.send` on the listener's
own HTTP/1.1 server (:mod:`permgate.gateway.http1`), or whole by :meth:`Answer.render`
for a request the server could not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import orjson

from permgate.core.decision import Decision
from permgate.core.reasons import Reason
from permgate.gateway.authn import AuthFailure
from permgate.gateway.http1 import http_date

if TYPE_CHECKING:
    from permgate.gateway.http1 import Exchange

__all__ = [
    "JSON",
    "Answer",
    "closing",
    "forbidden",
    "json_response",
    "refusal",
    "unauthenticated",
]

JSON: Final = "application/json"
_REASONS: Final = {400: "Bad Request", 408: "Request Timeout", 200: "OK"}


@dataclass(slots=True)
class Answer:
    """A whole answer a deciding listener sends (never a relayed one)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = JSON
    close: bool = False  # the connection ends after it

    def fields(self) -> bytes:
        """The header lines besides Content-Length, Date and Connection."""
        lines = f"Content-Type: {self.content_type}\r\n" if self.content_type else ""
        for name, value in self.headers.items():
            lines += f"{name}: {value}\r\n"
        if lines.count("\n") != lines.count("\r\n"):  # a CR or LF inside a value
            raise ValueError("refusing to send a header value that contains CR or LF")
        return lines.encode("utf-8", "surrogateescape")

    def send(self, exchange: Exchange) -> None:
        """Write this answer on ``exchange``."""
        exchange.respond(self.status, self.fields(), self.body, close=self.close)

    def render(self) -> bytes:
        """The whole answer as HTTP/1.1 bytes that end the connection."""
        reason = _REASONS.get(self.status, "Error")
        return (
            b"HTTP/1.1 %d %b\r\nDate: %b\r\nContent-Length: %d\r\nConnection: close\r\n%b\r\n%b"
            % (
                self.status,
                reason.encode(),
                http_date(),
                len(self.body),
                self.fields(),
                self.body,
            )
        )


def json_response(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> Answer:
    return Answer(status, orjson.dumps(body), headers if headers is not None else {})


def refusal(status: int, error: str, reason: str, request_id: str) -> Answer:
    return json_response(status, {"error": error, "reason": reason, "request_id": request_id})


def closing(answer: Answer) -> Answer:
    """The answer ends its connection, and says so (HTTP/1.0 clients included)."""
    answer.close = True
    return answer


def unauthenticated(failure: AuthFailure, request_id: str) -> Answer:
    return json_response(
        401,
        {"error": "unauthenticated", "reason": failure.reason, "request_id": request_id},
        {"WWW-Authenticate": failure.www_authenticate},
    )


def forbidden(decision: Decision, request_id: str) -> Answer:
    body: dict[str, object] = {
        "error": "forbidden",
        "reason": decision.reason,
        "missing_permissions": list(decision.missing),
        "request_id": request_id,
    }
    if decision.reason == Reason.MISSING_PERMISSION and decision.any_of:
        body["any_of"] = list(decision.any_of)
    return json_response(403, body)
