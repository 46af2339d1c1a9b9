"""Forwarding an allowed request to the upstream, streamed both ways.

The client half of a proxy is where most of its CPU goes (bench/README.md):
aiohttp's ``ClientSession`` alone costs ~100-130 µs per request. So one
:class:`Upstream` owns a lean HTTP/1.1 client of its own (:mod:`permgate.gateway.upstream_http`)
for every kind of upstream (``http://``, ``https://`` and ``unix:``): a keep-alive
pool of asyncio protocols on the running loop, each request head written as one
buffer, answers parsed by ``httptools`` and relayed chunk by chunk with flow control
both ways. An ``https://`` upstream is the same client over asyncio's TLS transport,
verified against the configured CA (see :mod:`permgate.runtime.tls`).

The answer goes to the client's :class:`~permgate.gateway.http1.Exchange` (the
deciding listeners' own server) as the upstream sent it: its header lines as raw bytes
minus the hop-by-hop ones, its body chunks as they arrive. Two ways, one behaviour:

- :meth:`Upstream.relay`, the common case (the whole body is here, a pooled connection
  is idle): relayed in the two protocols' callbacks, with no Task and no Future, and a
  ``done`` callback at the end;
- :meth:`Upstream.forward`, a coroutine, for the rest: a body still arriving (streamed
  while it comes), a connection still to open, the retry on a stale one.

This module is the one boundary where the lean client's errors become permgate
errors::

    PermgateError
    └── UpstreamError               502 bad_gateway
        ├── UpstreamUnavailable     502, kind "connect": refused, reset, DNS, TLS handshake
        ├── UpstreamProtocolError   502, kind "protocol": the upstream broke HTTP
        └── UpstreamTimeout         504, kind "timeout": connect, head or one read
    ClientRequestError              the client's side of the exchange failed
        ├── ClientStalled           408 request_timeout: no body bytes for the timeout
        └── ClientBodyInvalid       400 malformed_request: the body's framing broke

A body that is not arriving never holds an upstream connection: up to
:data:`PREBUFFER_BYTES` of it are received (each read bounded by the timeout) before
a pooled connection is taken, so a small body goes upstream whole, and only a large
one is streamed while the connection is held; a stall while streaming releases it.

Errors are raised only while no byte of the answer has been sent. Once the answer
has started its status cannot change, so a failure then aborts the client
connection (the client sees a truncated body, never a silently short one) and is
reported through :class:`UpstreamTiming` instead.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

from yarl import URL

from permgate.core.errors import ConfigError, PermgateError
from permgate.gateway import upstream_http
from permgate.gateway.http1 import BodyBroken, BodyTimeout, ClientGone, Exchange
from permgate.gateway.hygiene import HOP_BY_HOP, ForwardHeaders
from permgate.gateway.upstream_http import (
    HEADER_DATE,
    HEADER_HOP,
    HEADER_LENGTH,
    BodyError,
    Connection,
    Pool,
    ProtocolViolation,
    TlsHandshakeFailed,
    UpstreamClosed,
)

__all__ = [
    "PREBUFFER_BYTES",
    "ClientBodyInvalid",
    "ClientRequestError",
    "ClientStalled",
    "Upstream",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamTiming",
    "UpstreamUnavailable",
]


class UpstreamError(PermgateError):
    """The upstream could not produce an answer; ``kind`` labels the metric."""

    status_code = 502
    error = "bad_gateway"
    reason = "upstream_unavailable"
    kind = "error"


class UpstreamUnavailable(UpstreamError):
    """No connection: refused, reset before the answer, name or TLS failure."""

    kind = "connect"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not valid HTTP."""

    kind = "protocol"


class UpstreamTimeout(UpstreamError):
    """Connecting, the answer's head or one read took longer than the timeout."""

    status_code = 504
    error = "gateway_timeout"
    reason = "upstream_timeout"
    kind = "timeout"


class ClientRequestError(PermgateError):
    """The client's request body could not be read; nothing is the upstream's fault."""

    status_code = 400
    error = "bad_request"
    reason = "malformed_request"


class ClientStalled(ClientRequestError, BodyError):
    """The client sent no body bytes for the timeout (nginx's client_body_timeout)."""

    status_code = 408
    error = "request_timeout"
    reason = "request_timeout"


class ClientBodyInvalid(ClientRequestError, BodyError):
    """The client's body broke its framing (bad chunking, a short Content-Length), or
    the client went away while sending it."""


# Received before an upstream connection is taken: a body that is not arriving (or
# arrives slowly) holds no pooled connection, and a small body is written at once.
PREBUFFER_BYTES: Final = 64 * 1024


@dataclass(slots=True)
class UpstreamTiming:
    """Filled in by :meth:`Upstream.forward` when the caller passes one.

    ``head_seconds``: until the upstream's status line and headers arrived.
    ``total_seconds``: until the last byte was handed to the client (or the failure).
    ``error``: an upstream failure after the answer started (the client was cut off).
    ``client_gone``: the client went away; whatever failed next was not the upstream.
    """

    head_seconds: float | None = None
    total_seconds: float | None = None
    error: UpstreamError | None = None
    client_gone: bool = False
    bytes_down: int = 0


_HOP_BY_HOP_RESPONSE_RAW: Final = frozenset(name.encode() for name in HOP_BY_HOP)
_UNIX_ORIGIN: Final = "http://localhost"


class Upstream:
    """The proxied API: ``http://host:port``, ``https://host:port`` or ``unix:/path``.

    Args:
        spec: where the upstream listens (config key ``upstream``).
        timeout_seconds: bound on connecting, on waiting for the answer's head and on
            each read; never on the whole transfer, so long streams are fine.
        max_connections: pool size; requests beyond it wait (within the timeout).
        ssl_context: for an ``https://`` upstream, the verifying client context
            (:func:`permgate.runtime.tls.upstream_context`); None takes the system's CAs.
        server_name: the name the upstream's certificate must carry, when it is not
            the host of ``spec``.
        keepalive_seconds: how long an idle pooled connection is kept. Keep it below
            the upstream's own idle timeout, or a request may land on a connection
            the upstream is closing.
    """

    def __init__(
        self,
        spec: str,
        timeout_seconds: float,
        *,
        max_connections: int = 1024,
        keepalive_seconds: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        if timeout_seconds <= 0:
            raise ConfigError([f"upstream_timeout_seconds: {timeout_seconds!r}: must be > 0"])
        self.spec = spec
        self.timeout_seconds = timeout_seconds
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._unix_path: str | None = None
        self._host: str | None = None
        self._port: int | None = None
        if spec.startswith("unix:"):
            self._unix_path = spec.removeprefix("unix:")
            if not self._unix_path.startswith("/"):
                raise ConfigError([f"upstream: {spec!r}: expected unix:/ABSOLUTE/PATH"])
            self._origin = _UNIX_ORIGIN
            self._default_host = "localhost"
        else:
            url = URL(spec)
            if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
                expected = "expected http://HOST:PORT, https://HOST:PORT or unix:/PATH"
                raise ConfigError([f"upstream: {spec!r}: {expected}"])
            self._origin = str(url.origin())
            self._host, self._port = url.raw_host, url.port
            self._default_host = url.host_port_subcomponent or url.raw_host or ""
        self._ssl: ssl.SSLContext | None = None
        self._server_name: str | None = None
        if self._origin.startswith("https://"):
            # Verification is always on: a context that would not verify is refused.
            if ssl_context is None:
                ssl_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
                raise ValueError("an upstream TLS context must verify the upstream")
            self._ssl = ssl_context
            self._server_name = server_name or self._host
        self._pool: Pool | None = None

    async def start(self) -> None:
        """Create the connection pool (inside the running loop)."""
        if self._pool is not None:
            return
        self._pool = Pool(
            host=self._host,
            port=self._port,
            unix_path=self._unix_path,
            timeout=self.timeout_seconds,
            max_connections=self._max_connections,
            keepalive_seconds=self._keepalive_seconds,
            ssl_context=self._ssl,
            server_hostname=self._server_name,
        )

    @property
    def open_connections(self) -> int:
        """Upstream connections open now (idle or in use) in the lean client's pool."""
        return self._pool.open_connections if self._pool is not None else 0

    async def close(self) -> None:
        """Close the pool; idempotent."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def forward(
        self,
        exchange: Exchange,
        *,
        path_qs: str,
        headers: ForwardHeaders,
        timing: UpstreamTiming | None = None,
        fresh: bool = False,
    ) -> int:
        """Send ``exchange``'s request upstream and relay the answer to its client.

        ``path_qs`` is sent byte for byte (it must be the raw target that was checked
        and authorized); ``headers`` exactly as given (see ``hygiene.forward_headers``).
        The request body is streamed from the client, never held whole. Returns the
        relayed status. Raises :class:`UpstreamError` or :class:`ClientRequestError`
        only before any byte of the answer went out.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("Upstream.forward() before start()")
        if timing is None:
            timing = UpstreamTiming()
        started = time.perf_counter()
        method = exchange.method
        has_body = exchange.has_body
        length = headers.content_length
        conn: Connection | None = None
        sender: asyncio.Task[None] | None = None
        try:
            first, done = b"", True
            if has_body:
                first, done = await _prebuffer(exchange, self.timeout_seconds)
            head = upstream_http.request_head(
                method, path_qs, headers, default_host=self._default_host, body=has_body
            )
            retry = method in upstream_http.IDEMPOTENT and not has_body and not fresh
            while True:
                try:
                    conn = await pool.acquire(fresh=fresh)
                except (TimeoutError, OSError) as exc:
                    raise _translate(exc) from exc
                conn.begin(method == "HEAD")
                exchange.on_lost(partial(conn.fail, ClientBodyInvalid("the client went away")))
                try:
                    if has_body:
                        sender = _send_body(
                            conn, exchange, head, length, first, done, self.timeout_seconds
                        )
                    else:
                        conn.write(head)
                        conn.request_sent()
                    await conn.read_head()
                except UpstreamClosed as exc:
                    reused = conn.reused
                    pool.discard(conn)
                    conn = None
                    if retry and reused and not exchange.gone:
                        retry, fresh = False, True  # a stale pooled connection: once more
                        continue
                    raise _translate(exc) from exc
                except ClientRequestError:
                    raise
                except BodyError as exc:
                    raise ClientBodyInvalid(str(exc)) from exc
                except (TimeoutError, OSError, ProtocolViolation) as exc:
                    raise _translate(exc) from exc
                break
            timing.head_seconds = time.perf_counter() - started
            return await _relay(exchange, conn, timing)
        finally:
            exchange.on_lost(None)
            if sender is not None and not sender.done():
                sender.cancel()  # the answer ended (or failed) before the upload did
            if conn is not None:
                pool.release(conn, sender is None or _sent(sender))
            timing.client_gone = timing.client_gone or exchange.gone
            timing.total_seconds = time.perf_counter() - started

    def relay(
        self,
        exchange: Exchange,
        *,
        path_qs: str,
        headers: ForwardHeaders,
        timing: UpstreamTiming,
        done: Callable[[PermgateError | None], None],
    ) -> bool:
        """:meth:`forward` without a Task or a Future, when it can start at once: the
        whole request body is here (or there is none) and a pooled connection is idle.
        The answer is relayed in the connections' own callbacks, and ``done`` is called
        once at the end: with None (relayed, or cut off: see ``timing``), or with the
        :class:`UpstreamError` / :class:`ClientRequestError` that :meth:`forward` would
        have raised (nothing of the answer went out). False: nothing was done; use
        :meth:`forward`."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("Upstream.relay() before start()")
        has_body = exchange.has_body
        if has_body and not exchange.body_done:
            return False
        method = exchange.method
        length = headers.content_length
        head = upstream_http.request_head(
            method, path_qs, headers, default_host=self._default_host, body=has_body
        )
        if has_body:
            first = exchange.peek_body()
            if length is not None:
                if len(first) != int(length):
                    return False  # forward() says why, as a ClientBodyInvalid
                head += first
            else:
                head += b"%x\r\n%b\r\n0\r\n\r\n" % (len(first), first) if first else b"0\r\n\r\n"
        now = pool.loop.time()  # read once: the idle connection's age, the head's wait
        conn = pool.take_idle(now)
        if conn is None:
            return False
        if has_body:
            exchange.take_body()
        relay = _Relay(self, pool, conn, exchange, timing, done, (path_qs, headers))
        exchange.deferred = True
        exchange.on_lost(relay.client_gone)
        try:
            conn.send(head, method == "HEAD", relay, now)
        except UpstreamClosed as exc:
            relay.failed(exc)
        return True


class _Relay:
    """One answer relayed in callbacks (:meth:`Upstream.relay`), as :func:`_relay` does
    it in a coroutine: the head with the first body bytes, chunks as they come, reading
    the upstream paused while the client's buffer is full."""

    __slots__ = ("_args", "conn", "done", "exchange", "pool", "started", "timing", "upstream")

    def __init__(
        self,
        upstream: Upstream,
        pool: Pool,
        conn: Connection,
        exchange: Exchange,
        timing: UpstreamTiming,
        done: Callable[[PermgateError | None], None],
        args: tuple[str, ForwardHeaders],
    ) -> None:
        self.upstream = upstream
        self.pool = pool
        self.conn = conn
        self.exchange = exchange
        self.timing = timing
        self.done = done
        self._args = args
        self.started = time.perf_counter()

    def head(self) -> None:
        conn = self.conn
        self.timing.head_seconds = time.perf_counter() - self.started
        kinds = conn.header_kinds
        if kinds & HEADER_HOP:
            lines, has_date, length = _response_lines(conn)
        else:  # _response_lines' common case, inline: one call fewer per answer
            lines = b"\r\n".join(map(b": ".join, conn.raw_headers))
            has_date, length = kinds & HEADER_DATE != 0, kinds & HEADER_LENGTH != 0
        self.exchange.start(conn.status, conn.raw_reason, lines, has_date=has_date, length=length)

    def flush(self, chunk: bytes) -> None:
        exchange = self.exchange
        if not chunk:
            exchange.flush()  # the head, if no body bytes came with it
            return
        self.timing.bytes_down += len(chunk)
        exchange.write(chunk)
        if exchange.write_paused:
            self.conn.pause()
            exchange.on_drain(self.conn.resume)

    def end(self, chunk: bytes) -> None:
        exchange = self.exchange
        if chunk:
            self.timing.bytes_down += len(chunk)
        exchange.finish(chunk)  # which drops the on_lost callback
        conn = self.conn
        if conn.active:  # ended in the connection's read: the time it read is now's
            self.pool.release(conn, True, conn.last_data)
        timing = self.timing
        timing.client_gone = timing.client_gone or exchange.gone
        timing.total_seconds = time.perf_counter() - self.started
        self.done(None)

    def client_gone(self) -> None:
        self.conn.fail(ClientBodyInvalid("the client went away"))

    def failed(self, exc: BaseException) -> None:
        exchange, conn, timing = self.exchange, self.conn, self.timing
        exchange.on_lost(None)
        reused = conn.reused
        self._finish(reusable=False)
        if exchange.answered:  # the answer started: cut the client off
            if exchange.gone or isinstance(exc, ClientRequestError):
                timing.client_gone = True
            else:
                timing.error = _translate(exc)
                timing.error.__cause__ = exc
            exchange.abort()
            self.done(None)
        elif isinstance(exc, ClientRequestError):
            self.done(exc)
        elif (
            isinstance(exc, UpstreamClosed)
            and reused
            and exchange.method in upstream_http.IDEMPOTENT
            and not exchange.has_body
        ):
            # A stale pooled connection: once more on a fresh one (forward() does that).
            task = asyncio.get_running_loop().create_task(self._retry())
            task.add_done_callback(self._retried)
        else:
            error = _translate(exc)
            error.__cause__ = exc
            self.done(error)

    async def _retry(self) -> None:
        path_qs, headers = self._args
        await self.upstream.forward(
            self.exchange, path_qs=path_qs, headers=headers, timing=self.timing, fresh=True
        )

    def _retried(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self.done(ClientBodyInvalid("the request was cancelled"))
            return
        exc = task.exception()
        if exc is None:
            self.done(None)
        elif isinstance(exc, PermgateError):
            self.done(exc)
        else:
            error = UpstreamUnavailable(f"upstream unavailable: {type(exc).__name__}")
            error.__cause__ = exc
            self.done(error)

    def _finish(self, *, reusable: bool) -> None:
        conn = self.conn
        if conn.active:
            self.pool.release(conn, reusable)
        timing = self.timing
        timing.client_gone = timing.client_gone or self.exchange.gone
        timing.total_seconds = time.perf_counter() - self.started


async def _relay(exchange: Exchange, conn: Connection, timing: UpstreamTiming) -> int:
    """Copy status, headers and body chunks as they arrive. While the client is slow
    the chunks wait in the connection, which stops reading the upstream socket
    beyond a bound (upstream_http.HIGH_WATER)."""
    lines, has_date, length = _response_lines(conn)
    exchange.start(conn.status, conn.raw_reason, lines, has_date=has_date, length=length)
    try:
        while True:
            chunk = conn.take()
            if chunk is None:
                if conn.complete:
                    exchange.finish()
                    return conn.status
                exchange.flush()  # the body is not here yet: the head goes ahead of it
                try:
                    await conn.wait_body()
                except (TimeoutError, OSError, ProtocolViolation, BodyError) as exc:
                    if exchange.gone:  # the client left: not the upstream's failure
                        raise ClientGone("the client closed the connection") from exc
                    timing.error = _translate(exc)
                    timing.error.__cause__ = exc
                    conn.abort()
                    exchange.abort()
                    return conn.status
                continue
            timing.bytes_down += len(chunk)
            if conn.complete:  # take() took all: this is the last of it
                exchange.finish(chunk)
                return conn.status
            exchange.write(chunk)
            if exchange.write_paused:
                await exchange.drain()
            elif exchange.gone:
                raise ClientGone("the client closed the connection")
    except ConnectionError:
        timing.client_gone = True
        conn.abort()
        return conn.status


def _response_fields(
    raw: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    """The upstream's answer headers minus hop-by-hop ones and those its Connection
    lists, as sent; whether they carry a Date and a Content-Length."""
    listed: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b","))
    listed -= {b"host", b"content-length"}
    dropped = _HOP_BY_HOP_RESPONSE_RAW | listed if listed else _HOP_BY_HOP_RESPONSE_RAW
    fields: list[tuple[bytes, bytes]] = []
    has_date = length = False
    for name, value in raw:
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == b"content-length":
            length = True
        elif lowered == b"date":
            has_date = True
        fields.append((name, value))
    return fields, has_date, length


def _response_lines(conn: Connection) -> tuple[bytes, bool, bool]:
    """:func:`_response_fields` as header lines joined by CRLF (no CRLF after the last).
    Usually nothing is to be dropped (the connection noted its header kinds as they
    came): then the lines are joined as they came, in C, with no pass in Python."""
    kinds = conn.header_kinds
    if kinds & HEADER_HOP:
        fields, has_date, length = _response_fields(conn.raw_headers)
        return b"\r\n".join(map(b": ".join, fields)), has_date, length
    lines = b"\r\n".join(map(b": ".join, conn.raw_headers))
    return lines, kinds & HEADER_DATE != 0, kinds & HEADER_LENGTH != 0


async def _read_chunk(exchange: Exchange, timeout: float) -> bytes:
    """The next body bytes from the client (b"" at its end), waiting at most ``timeout``
    for them; a client error (reset, bad chunking) becomes a :class:`BodyError` that
    names the error's class only, never the bytes."""
    while True:
        chunk = exchange.take_body()
        if chunk is not None:
            return chunk
        if exchange.body_done:
            return b""
        try:
            await exchange.wait_body(timeout)
        except BodyTimeout:
            raise ClientStalled(f"the client sent no body bytes for {timeout}s") from None
        except BodyBroken as exc:
            raise ClientBodyInvalid(str(exc)) from None


async def _prebuffer(exchange: Exchange, timeout: float) -> tuple[bytes, bool]:
    """Up to :data:`PREBUFFER_BYTES` of the body, and whether that is all of it."""
    if exchange.body_done:
        # The whole body is already here (the common small request): no wait, no timer.
        return exchange.take_body() or b"", True
    parts: list[bytes] = []
    size = 0
    while size < PREBUFFER_BYTES:
        chunk = await _read_chunk(exchange, timeout)
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), False


async def _send_body_task(
    conn: Connection, exchange: Exchange, length: str | None, remaining: int, timeout: float
) -> None:
    """Stream the rest of the client's body upstream as it arrives: Content-Length
    bodies as they are, the others chunked. Never more than one chunk is held; a client
    that sends nothing for ``timeout`` fails the exchange (:class:`ClientStalled`)."""
    if length is not None:
        while remaining > 0:
            chunk = await _read_chunk(exchange, timeout)
            if not chunk:
                raise ClientBodyInvalid("the client's body ended before its Content-Length")
            remaining -= len(chunk)
            conn.write(chunk)
            await conn.drain()
    else:
        while chunk := await _read_chunk(exchange, timeout):
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await conn.drain()
        conn.write(b"0\r\n\r\n")
    conn.request_sent()


def _send_body(
    conn: Connection,
    exchange: Exchange,
    head: bytes,
    length: str | None,
    first: bytes,
    done: bool,
    timeout: float,
) -> asyncio.Task[None] | None:
    """Write the head with the prebuffered ``first`` bytes of the body (all of it when
    ``done``) and stream the rest in a task, so an upstream that answers before
    reading it all is heard at once."""
    if length is not None:
        expected = int(length)
        if done or len(first) >= expected:
            if len(first) != expected:
                raise ClientBodyInvalid(f"the client's body has {len(first)} bytes, not {length}")
            conn.write(head + first)
            conn.request_sent()
            return None
        conn.write(head + first)
        remaining = expected - len(first)
    else:
        if done:
            framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(first), first) if first else b"0\r\n\r\n"
            conn.write(head + framed)
            conn.request_sent()
            return None
        conn.write(head + (b"%x\r\n%b\r\n" % (len(first), first) if first else b""))
        remaining = 0
    task = asyncio.get_running_loop().create_task(
        _send_body_task(conn, exchange, length, remaining, timeout)
    )

    def finished(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            conn.fail(exc)

    task.add_done_callback(finished)
    return task


def _sent(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _translate(exc: BaseException) -> UpstreamError:
    """Map one client failure onto the permgate tree (the only place)."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream timed out: {exc}")
    if isinstance(exc, ProtocolViolation):
        return UpstreamProtocolError(f"upstream answered invalid HTTP: {exc}")
    if isinstance(exc, TlsHandshakeFailed):
        return UpstreamUnavailable(str(exc))
    return UpstreamUnavailable(f"upstream unavailable: {exc}")
