"""The HTTP/1.1 server of the deciding listeners (the gateway and the decision service).

One :class:`ServerProtocol` per client connection: an ``asyncio.Protocol`` on
``httptools`` (llhttp, strict) that turns each request head into an :class:`Exchange`
(the request record plus its body channel and its answer) and hands it to the
listener's :class:`Handler`. aiohttp's server half cost about as much CPU per request
as everything permgate decides; this one does only what the deciding listeners need:

- Pipelining: requests are answered one at a time, in the order they came; a head
  that arrives while another request is being answered waits (with its body) until
  the answer before it is complete.
- Keep-alive: an idle connection is closed after :data:`KEEPALIVE_SECONDS` (nginx's
  default). A request head must arrive whole within ``head_timeout`` of its first
  byte (nginx's ``client_header_timeout``), else it is answered 408 and the
  connection closed. The body's idle timeout is the reader's (:meth:`Exchange.wait_body`).
- Limits as aiohttp had them: the request line and each header name or value at most
  :data:`MAX_LINE` bytes, at most :data:`MAX_HEADERS` header lines, and a single
  ``Host``. What the parser refuses (bad line endings, obs-fold, control bytes,
  ``Name :``, conflicting lengths, an HTTP version other than 1.0/1.1...) goes to
  :meth:`Handler.refuse_unreadable`: the JSON error shape with a reason from the closed
  set, counted and audited, as HTTP/1.1 with ``Connection: close``, and nothing of the
  request is echoed or logged (only the error's class is).
- ``Expect: 100-continue``: answered by :meth:`Exchange.send_continue` when the
  handler decides to read the body; a request refused without it is answered and the
  connection closed (the client may or may not send the body).
- Flow control both ways: reading the client pauses while more than
  :data:`HIGH_WATER` body bytes wait for their reader (or too many pipelined requests
  wait); :meth:`Exchange.drain` waits while the client's socket buffer is full.
- A client that goes away fails what the handler waits for (its body, a drain) and
  :attr:`Exchange.gone` tells it: the answer cannot be delivered.

A handler serves what it can without waiting in a plain call (the gateway's common
case) and returns a coroutine for the rest. That coroutine is started inline: an
answer decided without waiting is written with no Task or Future made for it; only a
handler that really waits gets a Task to finish in.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from asyncio.tasks import _enter_task, _leave_task  # the inline start (see _Inline)
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any, Final, Protocol, cast

import httptools
from multidict import CIMultiDict

from permgate.core.reasons import HygieneReason
from permgate.gateway.fieldnames import CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING

__all__ = [
    "HIGH_WATER",
    "KEEPALIVE_SECONDS",
    "MAX_HEADERS",
    "MAX_LINE",
    "BodyBroken",
    "BodyTimeout",
    "ClientGone",
    "Exchange",
    "Handler",
    "Listener",
    "ServerProtocol",
    "http_date",
]

log = logging.getLogger("permgate.gateway")

# How long an idle keep-alive connection is kept (nginx's keepalive_timeout default).
KEEPALIVE_SECONDS: Final = 75.0
# The limits aiohttp's server had: the request line, each header name and value; header lines.
MAX_LINE: Final = 8190
MAX_HEADERS: Final = 128
# Body bytes waiting for their reader beyond this pause reading the client's socket.
HIGH_WATER: Final = 256 * 1024
# Pipelined requests waiting for their turn beyond this pause reading the client.
_MAX_QUEUED: Final = 16
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS: Final = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class ClientGone(ConnectionError):
    """The client closed or reset its connection."""


class BodyTimeout(TimeoutError):
    """No request body bytes arrived within the timeout (nginx's client_body_timeout)."""


class BodyBroken(Exception):
    """The request body broke its framing (bad chunking...) or ended early; the
    message names no byte of it."""


class _Refused(Exception):
    """A head the server refuses itself: ``reason`` from the closed set."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Handler(Protocol):
    """What a deciding listener does with requests (the gateway, the decision service)."""

    def handle(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Answer ``exchange`` (through :meth:`Exchange.respond` or a relay); never
        raises for a request-level problem. None: done without waiting (answered, or
        relayed in callbacks); else the coroutine that finishes it (an ``async def``
        handler returns one)."""
        ...

    def refuse_unreadable(
        self, client_ip: str | None, status: int, reason: str
    ) -> Coroutine[Any, Any, bytes]:
        """The whole answer (``Connection: close``) to a request the server could not
        read, counted and audited; nothing of the request is known."""
        ...


_date_cache: list[Any] = [0, b""]


def http_date() -> bytes:
    """The ``Date`` value now, rendered once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    value: bytes = _date_cache[1]
    return value


class Exchange:
    """One request: the record the handler decides on, its body as it arrives, and
    its answer (a whole pre-rendered one, or a streamed relay)."""

    __slots__ = (
        "_body",
        "_buffered",
        "_chunked",
        "_conn",
        "_continue_sent",
        "_head",
        "_on_drain",
        "_on_lost",
        "_waiter",
        "answered",
        "body_done",
        "body_error",
        "client_ip",
        "close_after",
        "deferred",
        "discarding",
        "expect_continue",
        "finished",
        "handled",
        "has_body",
        "headers",
        "keep_alive",
        "method",
        "peercert",
        "refusal",
        "scheme",
        "status",
        "target",
        "version",
    )

    def __init__(
        self,
        conn: ServerProtocol,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        version: tuple[int, int],
        keep_alive: bool,
        has_body: bool = False,
        expect_continue: bool = False,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target  # the raw request-target, exactly as received
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.client_ip = conn.client_ip
        self.scheme = conn.scheme
        self.peercert = conn.peercert
        self.has_body = has_body
        self.expect_continue = expect_continue
        self.body_done = False
        self.body_error: BaseException | None = None
        self._body: list[bytes] = []  # a list: made without a call, per request
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._chunked = False
        self._head = b""  # a relayed answer's head, written with its first body bytes
        self.answered = False  # the answer's head is written
        self.finished = False  # the whole answer is written
        self.handled = False  # the handler's coroutine ended
        self.close_after = False
        self.discarding = False  # answered before its body came: the rest is dropped
        self._on_lost: Callable[[], None] | None = None
        self._on_drain: Callable[[], None] | None = None
        self.deferred = False  # answered later, by a callback relay (not by the handler)
        self.status = 0
        self.refusal: tuple[int, str] | None = None  # an unreadable request's answer

    # ------------------------------------------------------------------ the body

    @property
    def gone(self) -> bool:
        """The client's connection is closed: nothing more can be delivered."""
        return self._conn.lost

    def take_body(self) -> bytes | None:
        """All body bytes received and not yet taken, or None if none are waiting."""
        body = self._body
        if not body:
            return None
        chunk = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        self._conn.body_taken()
        return chunk

    def peek_body(self) -> bytes:
        """The body bytes received and not yet taken, left in place."""
        body = self._body
        if len(body) > 1:
            joined = b"".join(body)
            body.clear()
            body.append(joined)
        return body[0] if body else b""

    async def wait_body(self, timeout: float) -> None:
        """Wait until body bytes wait, the body ended, or it failed (raised). The
        wait is bounded by ``timeout`` (:class:`BodyTimeout`)."""
        if self._body or self.body_done:
            return
        if self.body_error is not None:
            raise self.body_error
        self.send_continue()
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire_body, waiter, timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not self._body and not self.body_done and self.body_error is not None:
            raise self.body_error

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue``, once, if the client waits for it."""
        if self.expect_continue and not self._continue_sent and not self.answered:
            self._continue_sent = True
            if not self._body and not self.body_done:
                self._conn.write(_CONTINUE)

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` if the client goes away (or stop, with None): whoever
        waits for something else than the client hears of it at once."""
        self._on_lost = callback

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the client's socket buffer has room again."""
        self._on_drain = callback

    def _feed(self, chunk: bytes) -> None:
        if self.discarding:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._conn.pause_for_body()
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if error is not None:
            if not self.body_done and self.body_error is None:
                self.body_error = error
        else:
            self.body_done = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ the answer

    def respond(self, status: int, fields: bytes, body: bytes, *, close: bool = False) -> None:
        """Write a whole answer: ``fields`` are its header lines (each ending CRLF) but
        ``Content-Length``, ``Date`` and ``Connection``, which this adds."""
        if self.answered:
            raise RuntimeError("the answer has started: no other answer can follow")
        self.answered = self.finished = True
        self.status = status
        close = self._closing(close)
        if close:
            conn_line = b"Connection: close\r\n"
        elif self.version == (1, 0):
            conn_line = b"Connection: keep-alive\r\n"
        else:
            conn_line = b""
        head = b"HTTP/1.1 %d %b\r\nDate: %b\r\nContent-Length: %d\r\n%b%b\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            http_date(),
            len(body),
            conn_line,
            fields,
        )
        if self.method == "HEAD":
            body = b""
        conn = self._conn
        conn.write(head + body if body else head)
        if self.handled:  # conn.answer_done(self), inline
            conn._settle(self)

    def start(
        self,
        status: int,
        reason: bytes,
        lines: bytes,
        *,
        has_date: bool,
        length: bool,
    ) -> None:
        """Write a relayed answer's head: ``lines`` are the header lines as the upstream
        sent them (hop-by-hop ones already removed), joined by CRLF, without one after
        the last. ``length``: they carry the body's Content-Length; else the body goes
        chunked to an HTTP/1.1 client, or ends with the connection."""
        if self.answered:
            raise RuntimeError("the answer has started")
        self.answered = True
        self.status = status
        close = self._closing(False)
        extra = b""
        if not length and not (self.method == "HEAD" or status in (204, 304) or status < 200):
            if self.version == (1, 1):
                self._chunked = True
                extra = b"Transfer-Encoding: chunked\r\n"
            else:
                close = self.close_after = True
        if close:
            extra += b"Connection: close\r\n"
        elif self.version == (1, 0):
            extra += b"Connection: keep-alive\r\n"
        if not has_date:
            extra += b"Date: " + http_date() + b"\r\n"
        # Held until the first body bytes or flush(): one write (one syscall) for a
        # small answer instead of two.
        template = b"HTTP/1.1 %d %b\r\n%b%b\r\n\r\n" if lines else b"HTTP/1.1 %d %b\r\n%b%b\r\n"
        self._head = template % (status, reason or _REASONS.get(status, b""), extra, lines)

    def flush(self) -> None:
        """Write the relayed answer's head now (its body is not there yet)."""
        if self._head:
            head, self._head = self._head, b""
            self._conn.write(head)

    def write(self, chunk: bytes) -> None:
        """Relay body bytes (framed as :meth:`start` chose)."""
        if chunk:
            if self._chunked:
                chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
            if self._head:
                chunk, self._head = self._head + chunk, b""
            self._conn.write(chunk)

    def finish(self, chunk: bytes = b"") -> None:
        """The relayed answer ends (with ``chunk``, its last bytes); nobody waits on the
        client for it any more (the :meth:`on_lost` callback is dropped)."""
        self._on_lost = None
        if self._chunked:
            chunk = b"%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk) if chunk else b"0\r\n\r\n"
        if self._head:
            chunk, self._head = self._head + chunk, b""
        conn = self._conn
        if chunk and not conn.lost and conn.transport is not None:  # conn.write(), inline
            conn.transport.write(chunk)
        self.finished = True
        if self.handled:  # conn.answer_done(self), inline
            conn._settle(self)

    @property
    def write_paused(self) -> bool:
        return self._conn.write_paused

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full; :class:`ClientGone` if it left."""
        await self._conn.drain()

    def abort(self) -> None:
        """Cut the client's connection, so a truncated answer cannot pass for a whole one."""
        self.close_after = True
        self._conn.abort()

    def _closing(self, close: bool) -> bool:
        if (
            close
            or not self.keep_alive
            or self._conn.stopping
            or (self.expect_continue and not self._continue_sent and not self.body_done)
        ):
            self.close_after = True
        return self.close_after


def _expire_body(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(BodyTimeout(f"the client sent no body bytes for {timeout}s"))


class ServerProtocol(asyncio.Protocol):
    """One client connection of a deciding listener (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        head_timeout: float,
        connections: set[ServerProtocol],
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._handler = handler
        self._head_timeout = head_timeout
        self.keepalive_seconds = keepalive_seconds
        self._connections = connections
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip: str | None = None
        self.scheme = "http"
        self.peercert: Any = None
        self.lost = False
        self.stopping = False  # the server shuts down: answer in flight, then close
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._closing = False  # no more requests are read on this connection
        # The head being parsed.
        self._url = b""
        self._headers: list[tuple[str, str]] = []  # decoded as they come
        self._head_started = 0.0  # loop time of its first byte; 0: none in progress
        self._hosts = 0
        self._framing = False  # a header named like Content-Length or Transfer-Encoding
        self._connection_named = False  # a Connection or Proxy-Connection header
        self._head_bytes = 0
        self._parsing: Exchange | None = None  # the request whose body is being read
        self._active: Exchange | None = None  # the request being answered
        self._queue: collections.deque[Exchange] = collections.deque()
        self._idle_since = self.loop.time()
        self._discard_until = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0])
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
            # Only a certificate the listener verified is there (permgate.runtime.tls).
            self.peercert = transport.get_extra_info("peercert")
        self._arm(self._idle_since + self.keepalive_seconds)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # answered for the last time: nothing more is read
        if not self._head_started and self._parsing is None:
            # A head starts in this read: its clock is read only if it is still incomplete
            # when the read is parsed (the common whole head needs no clock at all).
            self._head_started = _UNTIMED
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade/CONNECT head: answered as a plain request, then the connection
            # closes (what follows the head is not HTTP/1.1 this server reads).
            self._closing = True
            if self._parsing is not None:
                self._parsing.close_after = True
                self._parsing._end()
                self._parsing = None
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        if self._head_started == _UNTIMED:  # the head is still incomplete: time it now
            self._head_started = self.loop.time()
        if self._head_started and not self._closing:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADERS * MAX_LINE:
                self._refuse(HygieneReason.HEADERS_TOO_LARGE, 400)
            elif (
                self._timer is None or self._timer.when() > self._head_started + self._head_timeout
            ):
                self._arm(self._head_started + self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._closing = True
        self._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gone = ClientGone("the client closed the connection")
        for exchange in (self._active, self._parsing, *self._queue):
            if exchange is not None:
                exchange._end(BodyBroken("the client went away while sending its body"))
        active = self._active
        if active is not None and active._on_lost is not None:
            callback, active._on_lost = active._on_lost, None
            callback()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        active = self._active
        if active is not None and active._on_drain is not None:
            callback, active._on_drain = active._on_drain, None
            callback()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._hosts = 0
        self._framing = False
        self._connection_named = False
        if not self._head_started:
            self._head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _Refused(HygieneReason.HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parsing is not None:
            return  # trailers after a chunked body: dropped
        headers = self._headers
        size = len(name)
        if size > MAX_LINE or len(value) > MAX_LINE or len(headers) >= MAX_HEADERS:
            raise _Refused(HygieneReason.HEADERS_TOO_LARGE)
        if size == 4:
            if name.lower() == b"host":
                self._hosts += 1
                if self._hosts > 1:
                    raise _Refused(HygieneReason.INVALID_HOST)
        elif size == 14 or size == 17:
            # The lengths of Content-Length and Transfer-Encoding: only a head with such
            # a name is searched for its body's framing (most have neither).
            self._framing = True
        elif (size == 10 or size == 16) and name.lower() in _CONNECTION_NAMES:
            self._connection_named = True
        try:  # decode()'s fast path, for the usual UTF-8 (ASCII) head: the same text
            headers.append((name.decode(), value.decode()))
        except UnicodeDecodeError:
            headers.append(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        if keep_alive and not self._connection_named:
            # llhttp keeps a request alive without a Connection (or Proxy-Connection)
            # header only if it is HTTP/1.1: no need to ask its version (a string made
            # by str.format, about 1 % of a whole request).
            ver = (1, 1)
        else:
            version = parser.get_http_version()
            if version == "1.1":
                ver = (1, 1)
            elif version == "1.0":
                ver = (1, 0)
            else:
                raise _Refused(HygieneReason.UNSUPPORTED_VERSION)
        headers: CIMultiDict[str] = CIMultiDict(self._headers)
        has_body = expect_continue = False
        if self._framing:  # a name as long as Content-Length or Transfer-Encoding came
            length = headers.get(CONTENT_LENGTH)
            has_body = TRANSFER_ENCODING in headers or (length is not None and length != "0")
            if has_body and ver == (1, 1):
                expect = headers.get(EXPECT)
                expect_continue = expect is not None and expect.lower() == "100-continue"
        url = self._url
        try:  # decode()'s fast path, for the usual UTF-8 (ASCII) target: the same text
            target = url.decode()
        except UnicodeDecodeError:
            target = url.decode("utf-8", "surrogateescape")
        exchange = Exchange(
            self,
            parser.get_method().decode(),  # llhttp's own name for it: ASCII
            target,
            headers,
            ver,
            keep_alive,
            has_body,
            expect_continue,
        )
        self._head_started = 0.0
        self._head_bytes = 0
        self._parsing = exchange
        if self._active is None:
            self._begin(exchange)
        else:
            self._wait_turn(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange._feed(body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if exchange is not None:
            exchange.body_done = True  # exchange._end(), inline: once per request
            if exchange._waiter is not None:
                exchange._wake()
            if exchange.finished and exchange.handled and exchange is self._active:
                self._next()  # a refused request's discarded body has ended

    # ------------------------------------------------------------------ requests

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if isinstance(cause, _Refused):
            self._refuse(cause.reason, 400)
            return
        log.debug("refused an unreadable request from %s: %s", self.client_ip, type(exc).__name__)
        exchange = self._parsing
        if exchange is not None:
            # The head was accepted and its body broke: that request fails (its handler
            # answers 400, the connection closes); nothing after it is read.
            self._closing = True
            self._parsing = None
            exchange.close_after = True
            exchange._end(
                BodyBroken(f"the request's body broke its framing ({type(exc).__name__})")
            )
            if exchange.finished and exchange.handled and exchange is self._active:
                self._next()
            return
        if "Invalid HTTP version" in str(exc) or "Invalid method for HTTP/x.x" in str(exc):
            self._refuse(HygieneReason.UNSUPPORTED_VERSION, 400)
        else:
            self._refuse(HygieneReason.MALFORMED_REQUEST, 400)

    def _refuse(self, reason: str, status: int) -> None:
        """Answer the head being read with ``reason`` (after the requests before it) and
        read nothing more."""
        self._closing = True
        self._head_started = 0.0
        log.debug("refused an unreadable request from %s: %s", self.client_ip, reason)
        exchange = Exchange(self, "", "", CIMultiDict(), (1, 1), False)
        exchange.refusal = (status, reason)
        exchange.body_done = True
        self._enqueue(exchange)

    def _enqueue(self, exchange: Exchange) -> None:
        if self._active is None:
            self._begin(exchange)
        else:
            self._wait_turn(exchange)

    def _wait_turn(self, exchange: Exchange) -> None:
        """``exchange`` waits until the answers before it are complete."""
        self._queue.append(exchange)
        if len(self._queue) >= _MAX_QUEUED:
            self._pause_reading()

    def _begin(self, exchange: Exchange) -> None:
        self._active = exchange
        coro: Coroutine[Any, Any, Any] | None
        if exchange.refusal is not None:
            status, reason = exchange.refusal
            coro = self._answer_unreadable(exchange, status, reason)
        else:
            try:
                coro = self._handler.handle(exchange)
            except Exception as exc:  # the handler never raises; if it did, answer 500
                self._crashed(exchange, exc)
                return
            if coro is None:  # served without waiting
                if exchange.finished or not (exchange.answered or exchange.deferred):
                    self._handled(exchange)
                else:  # its answer is still being written: that finishes it (_handled)
                    exchange.handled = True
                return
        loop = self.loop
        inline = _Inline()
        current = cast("asyncio.Task[Any]", inline)
        try:
            _enter_task(loop, current)
        except RuntimeError:  # called from inside a Task: the handler gets its own
            task = loop.create_task(coro)
            task.add_done_callback(lambda t: self._task_done(exchange, t))
            return
        try:
            yielded = coro.send(None)
        except StopIteration:
            yielded = _DONE
        except BaseException as exc:  # the handler never raises; if it did, answer 500
            _leave_task(loop, current)
            self._crashed(exchange, exc)
            return
        _leave_task(loop, current)
        if yielded is _DONE:
            self._handled(exchange)
            return
        task = inline.task = loop.create_task(_resume(coro, yielded))
        task.add_done_callback(lambda t: self._task_done(exchange, t))

    async def _answer_unreadable(self, exchange: Exchange, status: int, reason: str) -> None:
        answer = await self._handler.refuse_unreadable(self.client_ip, status, reason)
        exchange.answered = exchange.finished = True
        exchange.close_after = True
        exchange.status = status
        self.write(answer)
        self.answer_done(exchange)

    def _task_done(self, exchange: Exchange, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._crashed(exchange, asyncio.CancelledError())
        elif (exc := task.exception()) is not None:
            self._crashed(exchange, exc)
        else:
            self._handled(exchange)

    def _crashed(self, exchange: Exchange, exc: BaseException) -> None:
        if not isinstance(exc, asyncio.CancelledError):
            log.error("a request handler failed", exc_info=exc)
        if exchange.answered and not exchange.finished:
            exchange.abort()  # cut short: never let it pass for a whole answer
        self._handled(exchange)

    def _handled(self, exchange: Exchange) -> None:
        exchange.handled = True
        if not exchange.answered and not exchange.deferred and not self.lost:
            exchange.respond(
                500,
                b"Content-Type: application/json\r\n",
                b'{"error":"internal","reason":"internal_error"}',
                close=True,
            )
        if exchange.finished:
            self._settle(exchange)

    def answer_done(self, exchange: Exchange) -> None:
        """The exchange's answer is written whole."""
        if exchange.handled:
            self._settle(exchange)

    def _settle(self, exchange: Exchange) -> None:
        """Both the handler and the answer are done: close, or wait for the rest of the
        body, or take the next request."""
        if exchange is not self._active:
            return
        if exchange.close_after or self.lost:
            self._close()
            return
        if not exchange.body_done:
            # Answered before its body came (a refusal): the rest is read and dropped,
            # within the head timeout, before the next request.
            exchange.discarding = True
            exchange._body.clear()
            self._resume_reading()
            self._discard_until = self.loop.time() + self._head_timeout
            self._arm(self._discard_until)
            return
        if self._queue or self.stopping or self._closing:
            self._next()
            return
        # _next()'s common case, inline: the connection waits for its next request.
        self._active = None
        self._idle_since = self.loop.time()
        if self._read_paused:
            self._resume_reading()

    def _next(self) -> None:
        self._active = None
        if (self.stopping or self._closing) and not self._queue:
            self._close()  # shutting down, or nothing more is read here (an Upgrade)
            return
        if self._queue:
            exchange = self._queue.popleft()
            self._resume_reading()
            self._begin(exchange)
            return
        self._idle_since = self.loop.time()
        if self._read_paused:
            self._resume_reading()

    # ------------------------------------------------------------------ timers

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # it fires first, and re-arms for what is due then
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """One lazy timer per connection: the head deadline, the deadline of a refused
        request's leftover body, the keep-alive deadline; whichever is due acts."""
        self._timer = None
        if self.lost or self.transport is None:
            return
        now = self.loop.time()
        active = self._active
        if self._head_started and not self._closing and active is None and not self._queue:
            deadline = self._head_started + self._head_timeout
            if now >= deadline - 0.001:
                self._refuse(HygieneReason.REQUEST_TIMEOUT, 408)
                return
            self._arm(deadline)
            return
        if active is not None:
            if active.discarding and not active.body_done:
                if now >= self._discard_until - 0.001:
                    self._close()  # a refused request's body did not come in time
                else:
                    self._arm(self._discard_until)
                return
            # A request is being answered: its own timeouts apply; check again later.
            self._arm(now + self._head_timeout)
            return
        if self._head_started:
            self._arm(self._head_started + self._head_timeout)
            return
        deadline = self._idle_since + self.keepalive_seconds
        if now >= deadline - 0.001:
            self._close()
        else:
            self._arm(deadline)

    # ------------------------------------------------------------------ I/O

    def write(self, data: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ClientGone("the client closed the connection")
        if not self.write_paused:
            return
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def body_taken(self) -> None:
        if self._read_paused and len(self._queue) < _MAX_QUEUED:
            self._resume_reading()

    def pause_for_body(self) -> None:
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and not self.lost and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and not self.lost and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def shut_down(self) -> None:
        """The server stops: an idle connection closes now, a busy one after its answer."""
        self.stopping = True
        if self._active is None and not self._queue:
            self._close()


_DONE: Final = object()
# The headers llhttp decides keep-alive by (besides the version).
_CONNECTION_NAMES: Final = frozenset({b"connection", b"proxy-connection"})
# ServerProtocol._head_started while a read that starts a head is parsed: no clock read yet.
_UNTIMED: Final = -1.0


class _Inline:
    """The current task while a handler runs inline (``asyncio.current_task()``): code
    that holds on to it (``asyncio.timeout``) reaches the Task the handler continues
    in, once it has one. Inline, nothing can be cancelled: the handler has not waited."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None

    def cancel(self, msg: Any = None) -> bool:
        return self.task.cancel(msg) if self.task is not None else False

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else 0

    def uncancel(self) -> int:
        return self.task.uncancel() if self.task is not None else 0

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def get_name(self) -> str:  # logging's taskName (Python 3.12+) asks for it
        return self.task.get_name() if self.task is not None else "permgate-inline"


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Finish a handler coroutine that was started inline and had to wait: what it
    yielded is awaited here, in a Task, exactly as a Task would have."""
    while True:
        if yielded is None:
            await asyncio.sleep(0)  # a bare yield: one turn of the loop
        else:
            # What a Task does with a yielded future: take over the wait on it.
            yielded._asyncio_future_blocking = False
            try:
                await yielded
            except BaseException:
                if not yielded.done():  # this Task was cancelled: cancel what it awaits
                    yielded.cancel()
                    await asyncio.sleep(0)
        # The coroutine reads the awaited future's result (or exception) itself.
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


class Listener:
    """A deciding listener: its sockets, its connections, and its graceful stop.

    Args:
        handler: what answers the requests (the gateway or the decision service).
        head_timeout: how long a request head may take from its first byte (the
            configured ``upstream_timeout_seconds``).
    """

    def __init__(self, handler: Handler, *, head_timeout: float) -> None:
        self._handler = handler
        self._head_timeout = head_timeout
        self.connections: set[ServerProtocol] = set()
        self._servers: list[asyncio.Server] = []

    def protocol(self) -> ServerProtocol:
        """The protocol factory ``loop.create_server`` calls per connection."""
        return ServerProtocol(
            self._handler, head_timeout=self._head_timeout, connections=self.connections
        )

    async def serve(self, sock: Any, *, ssl: Any = None, backlog: int = 100) -> None:
        """Accept connections on the bound socket ``sock`` (TLS with ``ssl``)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.protocol, sock=sock, ssl=ssl, backlog=backlog)
        self._servers.append(server)

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for server in self._servers for sock in server.sockets]

    async def shut_down(self, timeout: float) -> None:
        """Stop accepting; close idle connections now, busy ones once their answer is
        written; after ``timeout`` cut whatever is left."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.shut_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
