"""Forwarding an allowed request to the upstream, streamed both ways.

One :class:`Upstream` owns one pooled :class:`aiohttp.ClientSession` for the
process; the client half of a proxy is where most of its CPU goes (PERF.md), so the
session is tuned once: keep-alive pool, DNS cached for the process's life, no
cookie jar, no redirects, no decompression, no headers of its own.

This module is the one boundary where aiohttp client errors become permgate
errors::

    PermgateError
    └── UpstreamError               502 bad_gateway
        ├── UpstreamUnavailable     502, kind "connect": refused, reset, DNS, TLS
        ├── UpstreamProtocolError   502, kind "protocol": the upstream broke HTTP
        └── UpstreamTimeout         504, kind "timeout": connect, head or one read

Errors are raised only while no byte of the answer has been sent. Once the answer
has started its status cannot change, so a failure then aborts the client
connection (the client sees a truncated body, never a silently short one) and is
reported through :class:`UpstreamTiming` instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from permgate.errors import ConfigError, PermgateError
from permgate.hygiene import HOP_BY_HOP, connection_listed

__all__ = [
    "SERVER_SETTINGS",
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


# The aiohttp server settings the gateway listener must run with for forward() to pass
# bodies byte for byte: web.AppRunner(app, **SERVER_SETTINGS). aiohttp's server
# otherwise inflates 'Content-Encoding: gzip' request bodies, and the upstream would
# get plain bytes still labelled gzip (and permgate would inflate compression bombs).
SERVER_SETTINGS: Final[Mapping[str, Any]] = MappingProxyType({"auto_decompress": False})

# What aiohttp's client would add on its own; the upstream must see the client's.
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_HOP_BY_HOP_RESPONSE: Final = HOP_BY_HOP
_UNIX_ORIGIN: Final = "http://localhost"


class Upstream:
    """The proxied API: ``http://host:port``, ``https://host:port`` or ``unix:/path``.

    Args:
        spec: where the upstream listens (config key ``upstream``).
        timeout_seconds: bound on connecting, on waiting for the answer's head and on
            each read; never on the whole transfer, so long streams are fine.
        max_connections: pool size; requests beyond it wait (within the timeout).
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
    ) -> None:
        if timeout_seconds <= 0:
            raise ConfigError([f"upstream_timeout_seconds: {timeout_seconds!r}: must be > 0"])
        self.spec = spec
        self.timeout_seconds = timeout_seconds
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._unix_path: str | None = None
        if spec.startswith("unix:"):
            self._unix_path = spec.removeprefix("unix:")
            if not self._unix_path.startswith("/"):
                raise ConfigError([f"upstream: {spec!r}: expected unix:/ABSOLUTE/PATH"])
            self._origin = _UNIX_ORIGIN
        else:
            url = URL(spec)
            if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
                expected = "expected http://HOST:PORT, https://HOST:PORT or unix:/PATH"
                raise ConfigError([f"upstream: {spec!r}: {expected}"])
            self._origin = str(url.origin())
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the pooled session (inside the running loop)."""
        if self._session is not None:
            return
        connector: aiohttp.BaseConnector
        if self._unix_path is not None:
            connector = aiohttp.UnixConnector(
                path=self._unix_path,
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_seconds,
            )
        else:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                use_dns_cache=True,
                ttl_dns_cache=None,  # resolve the upstream once, not per request
                keepalive_timeout=self._keepalive_seconds,
            )
        t = self.timeout_seconds
        self._session = aiohttp.ClientSession(
            connector=connector,
            # sock_read starts once the request body is sent, then restarts on every
            # read: it bounds the head and each chunk, never the whole transfer.
            timeout=aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            raise_for_status=False,
            requote_redirect_url=False,
        )

    async def close(self) -> None:
        """Close the pool; idempotent."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def forward(
        self,
        request: web.BaseRequest,
        *,
        path_qs: str,
        headers: CIMultiDict[str],
        timing: UpstreamTiming | None = None,
    ) -> web.StreamResponse:
        """Send ``request`` upstream and stream the answer back to its client.

        ``path_qs`` is sent byte for byte (it must be the raw target that was checked
        and authorized); ``headers`` exactly as given (see ``hygiene.forward_headers``).
        The request body is streamed from the client, never held whole. Returns the
        prepared, finished response. Raises :class:`UpstreamError` only before any
        byte of the answer went out.
        """
        session = self._session
        if session is None:
            raise RuntimeError("Upstream.forward() before start()")
        started = time.perf_counter()
        if timing is None:
            timing = UpstreamTiming()
        url = URL(self._origin + path_qs, encoded=True)
        body = request.content if request.body_exists else None
        try:
            try:
                upstream = await session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    expect100=False,
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _translate(exc) from exc
            timing.head_seconds = time.perf_counter() - started
            return await self._relay(request, upstream, timing)
        finally:
            # Whatever ended the exchange, say whether the client was still there: an
            # upload cut by its client surfaces as an upstream write error, and a
            # server with handler_cancellation cancels us when the client leaves.
            timing.client_gone = timing.client_gone or _client_gone(request)
            timing.total_seconds = time.perf_counter() - started

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, timing: UpstreamTiming
    ) -> web.StreamResponse:
        """Copy status, headers and body chunks as they arrive; the pool gets the
        connection back only when the body was read to its end."""
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_response_headers(upstream.headers),
        )
        clean = False
        try:
            try:
                await response.prepare(request)
            except ConnectionError:
                timing.client_gone = True
                return response
            content = upstream.content
            while True:
                try:
                    chunk = await content.readany()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    timing.error = _translate(exc)
                    timing.error.__cause__ = exc
                    _abort(request)
                    return response
                if not chunk:
                    break
                try:
                    await response.write(chunk)
                except ConnectionError:
                    timing.client_gone = True
                    return response
                timing.bytes_down += len(chunk)
            try:
                await response.write_eof()
            except ConnectionError:
                timing.client_gone = True
                return response
            clean = True
            return response
        finally:
            if clean:
                upstream.release()
            else:
                upstream.close()


def _response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's answer headers minus hop-by-hop ones and those its Connection lists."""
    listed = connection_listed(headers)
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if (key := name.lower()) not in _HOP_BY_HOP_RESPONSE and key not in listed
    )


def _translate(exc: BaseException) -> UpstreamError:
    """Map one aiohttp client failure onto the permgate tree (the only place)."""
    if isinstance(exc, TimeoutError):  # ServerTimeoutError and subclasses too
        return UpstreamTimeout(f"upstream timed out: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return UpstreamProtocolError(f"upstream answered invalid HTTP: {exc}")
    return UpstreamUnavailable(f"upstream unavailable: {exc}")


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.BaseRequest) -> None:
    """Cut the client connection so a truncated answer cannot pass for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.abort()
