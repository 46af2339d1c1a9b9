"""The gateway listener's HTTP/1.1 server: aiohttp's, with permgate's answers.

aiohttp's server answers what its parser refuses (bad line endings, obs-fold, control
bytes, ``Name :``, conflicting lengths, oversized heads...) itself: a ``text/plain``
400 that quotes the offending request bytes, credentials and cookies included, after
logging them at ERROR. It never times out a request head that stops half-way, and keeps
an idle connection for an hour. :class:`GatewayServer` changes exactly that:

- Every request the parser refuses goes to :meth:`Gateway.refuse_unreadable`: the JSON
  error shape with a reason from the closed set (``malformed_request``,
  ``headers_too_large``, ``unsupported_http_version``), counted in the decision
  metrics and audited like any deny, and the connection closed. Neither the answer
  nor any log line carries a byte of the request.
- A request head must arrive whole within ``timeout_seconds`` of its first byte
  (nginx's ``client_header_timeout``): else the client is answered 408
  ``request_timeout`` (counted and audited) and the connection closed. The body's idle
  timeout lives where the body is read (:mod:`permgate.gateway.proxy`).
- An idle keep-alive connection is closed after :data:`KEEPALIVE_SECONDS` (nginx's
  default), and aiohttp's access log is off: the audit event is the access log, and
  a request line can carry a secret in its query.

It reaches into aiohttp's ``RequestHandler`` (its message queue and error handler),
so it is pinned by tests/test_hardening_requests.py against the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from permgate.gateway import hygiene
from permgate.gateway.proxy import SERVER_SETTINGS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from permgate.gateway.pipeline import Gateway

__all__ = ["KEEPALIVE_SECONDS", "GatewayRequestHandler", "GatewayServer"]

log = logging.getLogger("permgate.gateway")

# How long an idle keep-alive connection is kept (nginx's keepalive_timeout default).
KEEPALIVE_SECONDS: Final = 75.0


class HeadTimeout(HttpProcessingError):
    """The client began a request head and did not finish it in time."""

    code = 408
    message = "request head timeout"


class BrokenBody(BadHttpMessage):
    """What a request's body reader raises when the parser refused what followed its
    head (bad chunking...): the parser's own error quotes the bytes, this does not."""

    def __init__(self) -> None:
        super().__init__("the request's body broke its framing")


def classify(exc: BaseException) -> tuple[int, str]:
    """The status and the reason for a request the server could not read."""
    if isinstance(exc, HeadTimeout):
        return 408, hygiene.REQUEST_TIMEOUT
    if isinstance(exc, LineTooLong):
        return 400, hygiene.HEADERS_TOO_LARGE
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        return 400, hygiene.HEADERS_TOO_LARGE
    if isinstance(exc, BadStatusLine) and "Invalid HTTP version" in exc.message:
        return 400, hygiene.UNSUPPORTED_VERSION
    if isinstance(exc, BadHttpMessage) and "'Host' header" in exc.message:
        return 400, hygiene.INVALID_HOST  # missing on HTTP/1.1, or sent twice
    return 400, hygiene.MALFORMED_REQUEST


class GatewayRequestHandler(RequestHandler):
    """One client connection of the gateway listener (see the module docstring)."""

    __slots__ = ("_gateway", "_head_count", "_head_timeout", "_head_timer", "_stalled")

    def __init__(
        self,
        manager: web.Server,
        *,
        gateway: Gateway,
        head_timeout: float,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._gateway = gateway
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        self._stalled = False

    # -- the head timeout ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._stalled:
            return  # answered 408: nothing more from this client is read
        if (
            self._head_timer is None
            and data
            and not self._messages
            and not self._request_in_progress
            and not (self._force_close or self._close)
        ):
            # Bytes while waiting for a request (or before the first one): a head
            # begins. Bytes while a request is handled are its body: not timed here.
            waiter = self._waiter
            if (waiter is not None and not waiter.done()) or self._request_count == 0:
                self._head_count = self._request_count
                self._head_timer = self._loop.call_later(self._head_timeout, self._head_expired)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued and isinstance(self._messages[-1][0], _ErrInfo):
            self._fail_open_bodies()
        if self._head_timer is not None and self._request_count != self._head_count:
            self._head_timer.cancel()  # the head is complete (or refused)
            self._head_timer = None

    def _fail_open_bodies(self) -> None:
        """The parser refused bytes that belonged to a body being read: aiohttp queues a
        400 for later and leaves that body waiting for ever. Fail it now, so the request
        reading it is answered (400, connection closed) instead of timing out."""
        broken = BrokenBody()
        current = self._current_request
        if current is not None and not current.content.is_eof():
            current.content.set_exception(broken)
        for message, payload in self._messages:
            if not isinstance(message, _ErrInfo) and not payload.is_eof():
                payload.set_exception(broken)

    def _head_expired(self) -> None:
        self._head_timer = None
        if (
            self._request_count != self._head_count
            or self._messages
            or self._request_in_progress
            or self._force_close
            or self._close
            or self.transport is None
        ):
            return
        # Answer through the server's own loop, as for a request the parser refused.
        self._stalled = True
        self._messages.append((_ErrInfo(status=408, exc=HeadTimeout(), message=""), EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _process_keepalive(self) -> None:
        if self._head_timer is not None:
            # A head is arriving: its own timer decides, and answers 408.
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    # -- refusals ------------------------------------------------------------------

    def _make_error_handler(
        self, err_info: _ErrInfo
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        status, reason = classify(err_info.exc)
        kind = type(err_info.exc).__name__
        gateway = self._gateway

        async def refuse(request: web.BaseRequest) -> web.StreamResponse:
            # ``request`` is aiohttp's placeholder (HTTP/1.0): answer as HTTP/1.1.
            _answer_as_http11(request)
            # The exception's text quotes the request bytes: only its class is logged.
            log.debug(
                "refused an unreadable request from %s: %s (%s)", request.remote, reason, kind
            )
            return await gateway.refuse_unreadable(request, status, reason)

        return refuse

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if request.version != HttpVersion11 and request.version != HttpVersion10:
            # A refused HTTP/0.9 or HTTP/2.0 request line: the status line says what
            # this server speaks, never the version the client claimed.
            _answer_as_http11(request)
        result = await super().finish_response(request, resp, start_time)
        if resp.status == 408 or (not resp.keep_alive and request.content.exception() is not None):
            # A stalled client or a broken body: close now, rather than linger for a
            # body that is not coming (aiohttp would read on for its lingering time).
            self.force_close()
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's last resort (the gateway's handler answers everything itself):
        the JSON shape, the connection closed, and no request byte in the answer or
        the log."""
        if exc is not None and not isinstance(exc, HttpProcessingError):
            self.log_exception("gateway handler failed", exc_info=exc)
        else:
            log.warning("gateway answered %s: %s", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started: no error answer can follow")
        error = "gateway_timeout" if status == 504 else "internal"
        reason = "upstream_timeout" if status == 504 else "internal_error"
        response = web.Response(
            status=status,
            body=orjson.dumps({"error": error, "reason": reason}),
            content_type="application/json",
        )
        response.force_close()
        return response


def _answer_as_http11(request: web.BaseRequest) -> None:
    """Make aiohttp write the answer's status line as HTTP/1.1 (``version`` is reified)."""
    request._version = HttpVersion11
    request._cache.pop("version", None)


class GatewayServer(web.Server):
    """``web.Server`` for the gateway listener: :class:`GatewayRequestHandler` per
    connection, the request-head timeout ``timeout_seconds`` (the configured
    ``upstream_timeout_seconds``), no access log, and :data:`SERVER_SETTINGS`."""

    def __init__(self, gateway: Gateway, *, timeout_seconds: float, **kwargs: Any) -> None:
        settings: dict[str, Any] = {
            **SERVER_SETTINGS,
            "access_log": None,
            "keepalive_timeout": KEEPALIVE_SECONDS,
            **kwargs,
        }
        super().__init__(gateway.handle, **settings)
        self._gateway = gateway
        self._head_timeout = timeout_seconds

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(
            self,
            gateway=self._gateway,
            head_timeout=self._head_timeout,
            loop=self._loop,
            **self._kwargs,
        )
