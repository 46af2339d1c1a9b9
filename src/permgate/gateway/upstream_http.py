"""A lean HTTP/1.1 client for the one upstream: a keep-alive pool of asyncio protocols.

aiohttp's ``ClientSession`` costs ~100-130 µs of CPU per proxied request (bench/README),
more than anything permgate decides. A sidecar talks to one origin over plain HTTP/1.1
on loopback or a unix socket, so most of that generality is not needed: this module
writes each request head as one buffer, parses answers with ``httptools`` (llhttp, the
C parser uvicorn uses) in ``data_received``, and hands body chunks to one consumer with
flow control both ways.

Only :mod:`permgate.gateway.proxy` uses it, and only ``proxy`` turns its exceptions into
permgate's (:class:`UpstreamClosed`, :class:`ProtocolViolation`, :class:`BodyError`,
``TimeoutError`` and ``OSError`` from connecting).

Rules this client keeps:

- One exchange at a time per connection: a connection is in the pool or owned by one
  request, never both, so a second request is never written before the first answer was
  read to its end (no pipelining).
- A connection goes back to the pool only if the answer was read to its end, the request
  was written to its end, both sides agreed on keep-alive, and nothing arrived that does
  not belong to the answer (bytes after it, or bytes while idle, close it).
- The timeout bounds each wait for the upstream (the head, once the request is written;
  each body read; each blocked write), never the whole transfer, and never the time the
  client takes to send or to read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Final, Protocol

import httptools

from permgate.gateway.hygiene import HOP_BY_HOP, ForwardHeaders

__all__ = [
    "BodyError",
    "Connection",
    "Pool",
    "ProtocolViolation",
    "TlsHandshakeFailed",
    "UpstreamClosed",
]

# Body bytes waiting for the client beyond this pause reading from the upstream socket.
HIGH_WATER: Final = 256 * 1024
# Methods a stale pooled connection may be retried for (RFC 9110 §9.2.2, minus TRACE).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Like aiohttp's client: other methods without a body get 'Content-Length: 0'.
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})

# What an answer's header names say, one bit each, OR-ed into Connection.header_kinds as
# they arrive: the relay then needs no pass over the headers to find them.
HEADER_LENGTH: Final = 1  # Content-Length
HEADER_DATE: Final = 2  # Date
HEADER_HOP: Final = 4  # a hop-by-hop name (Connection, Transfer-Encoding, ...): not relayed
HEADER_CODING: Final = 8  # Transfer-Encoding
_KIND_OF: Final[dict[bytes, int]] = {
    **{name.encode(): HEADER_HOP for name in HOP_BY_HOP},
    b"transfer-encoding": HEADER_HOP | HEADER_CODING,
    b"content-length": HEADER_LENGTH,
    b"date": HEADER_DATE,
}
# Header name as sent -> its kind. Names repeat from answer to answer, so this is one
# dict lookup per header instead of a lower() and a set lookup. Bounded.
_KINDS: Final[dict[bytes, int]] = {}
_KINDS_MAX: Final = 1024


def _header_kind(name: bytes) -> int:
    kind = _KIND_OF.get(name.lower(), 0)
    if len(_KINDS) < _KINDS_MAX:
        _KINDS[name] = kind
    return kind


class UpstreamClosed(ConnectionError):
    """The upstream closed (or reset) the connection before any byte of the answer."""


class TlsHandshakeFailed(ConnectionError):
    """The TLS handshake with the upstream failed (its certificate did not verify, no
    common protocol version, ...); the message says why."""


class ProtocolViolation(Exception):
    """The answer is not valid HTTP/1.1, or it ended before its framing said it would."""


class BodyError(Exception):
    """The client's request body could not be read to its end (the client went away)."""


RawHeaders = list[tuple[bytes, bytes]]


class Sink(Protocol):
    """Who takes an answer as it arrives, in the connection's own callbacks (the
    callback relay: no Future and no Task between the upstream and the client)."""

    def head(self) -> None:
        """The final head is in (``status``, ``raw_headers``)."""
        ...

    def end(self, chunk: bytes) -> None:
        """The answer ended with ``chunk``, its body bytes from the last read (after the
        parser returned; the connection may be reused)."""
        ...

    def flush(self, chunk: bytes) -> None:
        """``chunk``, the body bytes from the last read (maybe none), is handed on (after
        the parser returned, answer not ended)."""
        ...

    def failed(self, exc: BaseException) -> None:
        """The exchange failed (timeout, broken answer, closed connection, client gone)."""
        ...


class Connection(asyncio.Protocol):
    """One keep-alive connection and the state of the exchange it carries."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._timeout = pool.timeout
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # holds one of the pool's slots
        self.reused = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Per-exchange state that needs no reset in begin(): an exchange leaves it as it
        # found it whenever its connection is reused (not broken, so no error; body
        # taken, no reader, no sink, not paused), or sets it before reading it.
        self._interim = False
        self.broken = False
        self.error: BaseException | None = None
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.sink: Sink | None = None
        self._wait_since = 0.0
        self.last_data = 0.0  # loop time of the last read (Pool.release may reuse it)
        self.begin(False)
        self.active = False

    # ------------------------------------------------------------------ exchange API

    def begin(self, head_method: bool) -> None:
        """Start an exchange on this (new, or idle and reusable) connection."""
        self.active = True
        self._head_method = head_method
        self._got_bytes = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.raw_reason = b""  # the answer's reason phrase as sent
        self.raw_headers: RawHeaders = []
        self.header_kinds = 0  # HEADER_* bits of the answer's header names
        self._ended = False  # the sink was told the answer ended (or failed)
        self._counting = False  # the request is written: waiting on the upstream counts
        self.request_written = False

    def send(self, data: bytes, head_method: bool, sink: Sink, now: float) -> None:
        """:meth:`begin`, :meth:`write`, :meth:`request_sent` and :meth:`attach` in one
        call, for a request written whole (the callback relay's common case); ``now``
        is the loop's time."""
        self.begin(head_method)  # the one list of what an exchange starts from
        transport = self.transport
        if self.closed or transport is None:
            raise UpstreamClosed("upstream connection closed while sending the request")
        transport.write(data)
        self.request_written = True
        self._counting = True
        self.sink = sink
        self._wait_since = now
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._on_timer)

    @property
    def reason(self) -> str:
        return self.raw_reason.decode("utf-8", "surrogateescape")

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamClosed("upstream connection closed while sending the request")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the upstream's socket buffer is full, at most ``timeout`` at a time."""
        if self.closed:
            raise UpstreamClosed("upstream connection closed while sending the request")
        if not self._write_paused:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        handle = self._loop.call_later(self._timeout, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._drain_waiter = None

    def request_sent(self) -> None:
        """The whole request is written: from now on the wait for the head is timed."""
        self.request_written = True
        self._counting = True
        self._wait_since = self._loop.time()
        if self._waiting() and self._timer is None:
            self._timer = self._loop.call_at(self._wait_since + self._timeout, self._on_timer)

    def attach(self, sink: Sink) -> None:
        """Hand the answer to ``sink`` in this connection's callbacks (call after the
        request is written): the head, each body chunk, the end or the failure."""
        self.sink = sink
        if self._counting and self._timer is None:
            self._timer = self._loop.call_at(self._wait_since + self._timeout, self._on_timer)

    def pause(self) -> None:
        """The sink's reader is slow: stop reading the upstream (not timed meanwhile)."""
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read the upstream again; the wait for its next bytes is timed anew."""
        if self._paused:
            self._paused = False
            self._wait_since = self._loop.time()
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
            if self._timer is None and self.active and not self.complete:
                self._timer = self._loop.call_at(self._wait_since + self._timeout, self._on_timer)

    def fail(self, exc: BaseException) -> None:
        """Fail the exchange (unless the answer already ended) and wake its reader."""
        self.broken = True
        if self.error is None and not self.complete:
            self.error = exc
        self._wake()
        sink = self.sink
        if sink is not None and not self._ended and not self.complete:
            self._ended = True
            sink.failed(exc)

    def _waiting(self) -> bool:
        """Someone waits on the upstream now (a reader, or a sink not held by its client)."""
        return self._waiter is not None or (self.sink is not None and not self._paused)

    def _notify_end(self) -> None:
        sink = self.sink
        if sink is not None and self.complete and not self._ended:
            self._ended = True
            sink.end(b"")

    async def read_head(self) -> None:
        """Wait for the final (non-1xx) head; raise the exchange's error if it failed."""
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    def take(self) -> bytes | None:
        """All body bytes received and not yet taken, or None if there are none."""
        body = self._body
        if not body:
            return None
        chunk = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()
        return chunk

    async def wait_body(self) -> None:
        """Wait until body bytes are buffered, the answer ended, or the exchange failed."""
        if self._body or self.complete:
            return
        if self.error is None:
            await self._wait()
        if not self._body and not self.complete and self.error is not None:
            raise self.error

    def finish(self) -> bool:
        """The exchange is over (whatever its outcome): stop timing, reset per-answer
        state. Whether the connection may serve another one.

        The timer stays armed: it does nothing when it fires between exchanges, and the
        next exchange on this pooled connection reuses it (its deadline is checked
        against that exchange's own wait), so a request arms and cancels no timer of
        its own (a uvloop timer each way cost ~2 µs a request)."""
        # Reusable: the answer read to its end, the request written to its end, both
        # sides agreed on keep-alive, nothing broke, and no byte is left over.
        reusable = (
            self.complete
            and self.keep_alive
            and self.request_written
            and not self.broken
            and not self.closed
            and self.error is None
            and not self._body
        )
        self.active = False
        if self._head_method:
            # llhttp does not know a HEAD answer has no body: start the next answer on a
            # fresh parser (any bytes the old one swallowed die with it).
            self._parser = httptools.HttpResponseParser(self)
        if self._body:
            self._body.clear()
            self._buffered = 0
        self.sink = None
        if self._paused:  # held for a slow client until the very end
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        return reusable

    def close(self) -> None:
        self.broken = True
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.broken = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        if self._counting:
            self._wait_since = now = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(now + self._timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        """One lazy timer per connection instead of one per read: it fires at the
        earliest possible deadline, and re-arms itself if data arrived meanwhile."""
        self._timer = None
        if not self._waiting() or not self._counting or not self.active or self.complete:
            return  # not waiting on the upstream now; the next wait arms it again
        since = max(self._wait_since, self.last_data)
        now = self._loop.time()
        if now - since >= self._timeout:
            what = "the answer's head" if not self.head_done else "the next body chunk"
            self.fail(TimeoutError(f"no data from the upstream for {self._timeout}s ({what})"))
        else:
            self._timer = self._loop.call_at(since + self._timeout, self._on_timer)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes on an idle connection belong to no request: never reuse it.
            self.broken = True
            self.abort()
            return
        self._got_bytes = True
        self.last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.broken = True
            self.abort()
            if not self.complete:
                cause = exc.__context__ if isinstance(exc.__context__, ProtocolViolation) else exc
                self.fail(ProtocolViolation(f"upstream answered invalid HTTP: {cause}"))
        sink = self.sink
        if sink is not None and not self._ended:
            # The body bytes of this read, handed on in one piece now that the parser
            # returned (the common small answer: with its end, in one call).
            body = self._body
            if body:
                chunk = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
            else:
                chunk = b""
            if self.complete:
                self._ended = True
                sink.end(chunk)
            elif self.head_done:
                sink.flush(chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamClosed(f"upstream closed the connection: {exc}"))
        if not self.active:
            self._pool.forget(self)
            return
        if self.complete:
            return
        if self.head_done and exc is None and self._until_eof():
            # An answer framed by the end of the connection ends here.
            self.complete = True
            self.keep_alive = False
            self._wake()
            self._notify_end()
        elif not self._got_bytes:
            self.fail(UpstreamClosed(f"upstream closed the connection before answering: {exc}"))
        else:
            where = "answer's body" if self.head_done else "answer's head"
            self.fail(ProtocolViolation(f"upstream closed the connection within the {where}"))

    def _until_eof(self) -> bool:
        """The answer's body is framed by the end of the connection (neither a length
        nor a coding, and a body allowed): asked only when the connection ends."""
        if self._head_method or self.status == 204 or self.status == 304:
            return False
        return not self.header_kinds & (HEADER_LENGTH | HEADER_CODING)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self.head_done:
            # A second answer to one request: whatever it is, it must not reach the
            # next request on this connection.
            self.broken = True

    def on_status(self, status: bytes) -> None:
        self.raw_reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # after the head: trailers, dropped
            self.raw_headers.append((name, value))
            try:
                kind = _KINDS[name]
            except KeyError:
                kind = _header_kind(name)
            if kind:
                self.header_kinds |= kind

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ProtocolViolation("101 Switching Protocols is not supported")
            # 1xx interim answer: skip it, the final one follows on this connection.
            self._interim = True
            self.raw_reason = b""
            self.raw_headers = []
            self.header_kinds = 0
            return
        self.status = status
        self.head_done = True
        if self._head_method:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()
        if self._waiter is not None:
            self._wake()
        sink = self.sink
        if sink is not None:
            sink.head()

    def on_body(self, body: bytes) -> None:
        if self._head_method or self.complete:
            self.broken = True
            return
        if self.sink is not None:
            if not self._ended:
                self._body.append(body)  # to the sink when the parser returns
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:  # HEAD answer the parser thought had a (zero) body
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        if self._waiter is not None:
            self._wake()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("upstream did not read the request in time"))


class Pool:
    """Keep-alive connections to one origin: at most ``max_connections`` open, idle ones
    closed after ``keepalive_seconds``, most recently used first."""

    def __init__(
        self,
        *,
        host: str | None,
        port: int | None,
        unix_path: str | None,
        timeout: float,
        max_connections: int,
        keepalive_seconds: float,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        # TLS to the upstream: verified against ssl_context's CAs as server_hostname.
        self._ssl = ssl_context
        self._server_hostname = server_hostname if ssl_context is not None else None
        self.timeout = timeout
        self._host = host
        self._port = port
        self._unix_path = unix_path
        self._max = max(1, max_connections)
        self._keepalive = keepalive_seconds
        self._idle: collections.deque[Connection] = collections.deque()
        self._all: set[Connection] = set()
        self._count = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._addresses: list[tuple[int, str, int]] | None = None
        self._closed = False
        self._factory: Callable[[], Connection] = lambda: Connection(self)

    def take_idle(self, now: float) -> Connection | None:
        """An idle pooled connection at once, or None (then :meth:`acquire` must wait);
        ``now`` is the loop's time."""
        idle = self._idle
        if not idle or self._closed:
            return None
        conn = idle[-1]
        if (
            conn.closed
            or conn.broken
            or not conn.counted
            or conn.idle_since < now - self._keepalive
        ):
            return self._pop_idle()  # the most recent is gone or too old: sort them out
        idle.pop()
        return conn

    async def acquire(self, *, fresh: bool = False) -> Connection:
        """An idle connection (unless ``fresh``) or a new one; waits for a free slot."""
        deadline = None
        while True:
            if self._closed:
                raise UpstreamClosed("upstream pool is closed")
            if not fresh:
                conn = self._pop_idle()
                if conn is not None:
                    return conn
            if self._count < self._max:
                break
            if fresh and self._idle:
                self.discard(self._idle.popleft())  # make room: the oldest idle one goes
                continue
            if deadline is None:
                deadline = self.loop.time() + self.timeout
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            handle = self.loop.call_at(deadline, _expire_slot, waiter)
            try:
                await waiter
            except BaseException:
                self._remove_waiter(waiter)
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # woken, then cancelled: pass the free slot on
                raise
            finally:
                handle.cancel()
        self._count += 1
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect()
        except BaseException:
            self._count -= 1
            self._wake_one()
            raise
        self._all.add(conn)
        return conn

    def release(self, conn: Connection, reusable: bool, now: float | None = None) -> None:
        """Give back a connection whose exchange is over; close it unless ``reusable``.
        ``now``: the loop's time, when the caller has it (the callback relay ends in the
        connection's read, which read it)."""
        if conn.finish() and reusable and not self._closed:
            conn.reused = True
            if now is None:
                now = self.loop.time()
            conn.idle_since = now
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self.loop.call_at(now + self._keepalive, self._sweep)
            if self._waiters:
                self._wake_one()
        else:
            self.discard(conn)

    def discard(self, conn: Connection) -> None:
        """Close a connection and free its slot (once)."""
        conn.active = False
        conn.close()
        if conn.counted:
            conn.counted = False
            self._count -= 1
            self._all.discard(conn)
            self._wake_one()

    def forget(self, conn: Connection) -> None:
        """An idle connection closed by the upstream; it is skipped when popped."""
        self.discard(conn)

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use (those being opened included)."""
        return self._count

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        for conn in list(self._all):
            self.discard(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost

    # ------------------------------------------------------------------ internals

    def _pop_idle(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_allowed = self.loop.time() - self._keepalive
        while idle:
            conn = idle.pop()
            if conn.closed or not conn.counted or conn.broken:
                self.discard(conn)
                continue
            if conn.idle_since < oldest_allowed:
                # LIFO: everything below is older still.
                self.discard(conn)
                while idle:
                    self.discard(idle.popleft())
                return None
            return conn
        return None

    def _sweep(self) -> None:
        self._sweeper = None
        idle = self._idle
        oldest_allowed = self.loop.time() - self._keepalive
        while idle and (idle[0].idle_since <= oldest_allowed or idle[0].closed):
            self.discard(idle.popleft())
        if idle:
            self._sweeper = self.loop.call_at(idle[0].idle_since + self._keepalive, self._sweep)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _remove_waiter(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    async def _connect(self) -> Connection:
        loop = self.loop
        if self._unix_path is not None:
            _, conn = await loop.create_unix_connection(self._factory, self._unix_path)
            return conn
        assert self._host is not None and self._port is not None
        addresses = self._addresses
        if addresses is None:
            # Resolved once and kept (like the old ttl_dns_cache=None), dropped after a
            # failed connect so a moved upstream is found again.
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            addresses = self._addresses = [
                (int(f), str(sa[0]), int(sa[1])) for f, _, _, _, sa in infos
            ]
        last: OSError | None = None
        for family, address, port in addresses:
            try:
                _, conn = await loop.create_connection(
                    self._factory,
                    address,
                    port,
                    family=family,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                    ssl_handshake_timeout=self.timeout if self._ssl is not None else None,
                )
                return conn
            except ssl.SSLError as exc:
                # Connected, but no TLS session: another address would answer the same.
                raise TlsHandshakeFailed(
                    f"TLS handshake with the upstream failed: {_tls_reason(exc)}"
                ) from exc
            except OSError as exc:
                last = exc
        self._addresses = None
        raise last if last is not None else OSError(f"cannot resolve {self._host}")


def _tls_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's own words without the source location: 'certificate verify failed:
    unable to get local issuer certificate', 'Hostname mismatch, ...'."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or exc.strerror or str(exc)
    return str(reason).lower().replace("_", " ")


def _expire_slot(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no free upstream connection in time"))


def request_head(
    method: str,
    path_qs: str,
    headers: ForwardHeaders,
    *,
    default_host: str,
    body: bool,
) -> bytes:
    """The request line and header block, one buffer, sent as given.

    ``body``: the client's request has a body; without a ``Content-Length`` it goes
    chunked. Adds only what HTTP needs: ``Host`` when absent, ``Transfer-Encoding:
    chunked`` for a body of unknown length, ``Content-Length: 0`` for a body-less
    POST/PUT/PATCH/DELETE without one (as aiohttp's client did).
    """
    fields = headers.lines
    length = headers.content_length
    pairs = list(map(": ".join, fields))
    lines = "\r\n".join(pairs)
    # Everything sent but the CRLFs added here: a CR or LF in it (a name, a value, the
    # target, the method, the default host) would split the request differently
    # upstream (request smuggling). 'in' finds one with memchr, where counting them
    # in the whole head cost a pass per character (several thousand instructions).
    probe = "".join(pairs) + method + path_qs
    extra = ""
    if not headers.has_host:
        extra += f"Host: {default_host}\r\n"
        probe += default_host
    if body:
        if length is None:
            extra += "Transfer-Encoding: chunked\r\n"
    elif length is None and method not in _BODYLESS_METHODS:
        extra += "Content-Length: 0\r\n"
    if "\r" in probe or "\n" in probe or " " in path_qs:
        raise ValueError("refusing to send a header or target that contains CR, LF or space")
    if lines:
        text = f"{method} {path_qs} HTTP/1.1\r\n{extra}{lines}\r\n\r\n"
    else:
        text = f"{method} {path_qs} HTTP/1.1\r\n{extra}\r\n"
    return text.encode("utf-8", "surrogateescape")
