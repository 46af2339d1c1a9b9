"""Upstream.forward against real servers on loopback: bytes, streaming, timeouts, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from permgate.core.errors import ConfigError, PermgateError
from permgate.gateway.http1 import Exchange, Listener
from permgate.gateway.hygiene import forward_headers
from permgate.gateway.proxy import (
    ClientRequestError,
    Upstream,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTiming,
    UpstreamUnavailable,
)
from permgate.gateway.responses import closing, json_response
from rawhttp import exchange, read_response, request

ServerFactory = Callable[..., Awaitable[TestServer]]

RELEASE = web.AppKey("release", asyncio.Event)


# --------------------------------------------------------------------------- upstream


async def echo(request: web.Request) -> web.Response:
    """Answers with the request body, and what it saw of the request line and framing."""
    body = await request.read()
    return web.Response(
        body=body,
        headers={
            "X-Seen-Method": request.method,
            "X-Seen-Target": request.raw_path,
            "X-Seen-Length": request.headers.get("Content-Length", "-"),
            "X-Seen-Chunked": request.headers.get("Transfer-Encoding", "-"),
            "X-Seen-Headers": ",".join(request.headers.keys()).lower(),
        },
    )


async def count(request: web.Request) -> web.Response:
    """Counts the body in chunks, never holding it."""
    total = 0
    digest = hashlib.sha256()
    async for chunk in request.content.iter_any():
        total += len(chunk)
        digest.update(chunk)
    return web.json_response({"bytes": total, "sha256": digest.hexdigest()})


async def gated(request: web.Request) -> web.StreamResponse:
    """Sends a first chunk, then waits for the test to say it arrived, then the rest."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"first;")
    await asyncio.wait_for(request.app[RELEASE].wait(), 5)
    await response.write(b"last")
    await response.write_eof()
    return response


async def slow_head(request: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return web.Response(text="too late")


async def trickle(request: web.Request) -> web.StreamResponse:
    """Ten chunks 0.1 s apart: each within a 0.3 s timeout, the whole well beyond it."""
    response = web.StreamResponse()
    await response.prepare(request)
    for i in range(10):
        await asyncio.sleep(0.1)
        await response.write(b"%d;" % i)
    await response.write_eof()
    return response


async def stall(request: web.Request) -> web.StreamResponse:
    """Starts the answer, then goes silent for longer than the timeout."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"partial")
    await asyncio.sleep(3)
    return response


async def truncate(request: web.Request) -> web.StreamResponse:
    """Promises 100 bytes, sends 10, and drops the connection."""
    response = web.StreamResponse(headers={"Content-Length": "100"})
    await response.prepare(request)
    await response.write(b"0123456789")
    assert request.transport is not None
    request.transport.abort()
    return response


async def hop(request: web.Request) -> web.Response:
    """An answer carrying hop-by-hop headers, one of them declared by Connection."""
    return web.Response(
        text="ok",
        headers={
            "Connection": "keep-alive, X-Upstream-Hop",
            "X-Upstream-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Trailer": "X-Checksum",
            "X-End-To-End": "1",
        },
    )


async def fixed(request: web.Request) -> web.Response:
    return web.Response(body=b"hello", content_type="text/plain")


async def peer(request: web.Request) -> web.Response:
    """Names the upstream connection the request came on (the proxy's local port)."""
    assert request.transport is not None
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))


async def close_after(request: web.Request) -> web.Response:
    """Answers with 'Connection: close': the proxy must not pool this connection."""
    response = web.Response(text=str(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]
    response.force_close()
    return response


BIG_CHUNK = os.urandom(256 * 1024)


async def big(request: web.Request) -> web.StreamResponse:
    """Streams as many BIG_CHUNKs as ?n= asks for, each awaited (the upstream's own drain)."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for _ in range(int(request.query["n"])):
        await response.write(BIG_CHUNK)
    await response.write_eof()
    return response


def upstream_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[RELEASE] = asyncio.Event()
    app.router.add_get("/gated", gated)
    app.router.add_get("/slow-head", slow_head)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/stall", stall)
    app.router.add_get("/truncate", truncate)
    app.router.add_get("/hop", hop)
    app.router.add_get("/fixed", fixed)  # HEAD too
    app.router.add_get("/peer", peer)  # HEAD too
    app.router.add_get("/close", close_after)
    app.router.add_get("/big", big)
    app.router.add_post("/count", count)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# --------------------------------------------------------------------------- proxy


class Forwarder:
    """What the pipeline does once a request is allowed, on the deciding listeners'
    own server (permgate.gateway.http1): forward it and relay the answer, with
    ``Upstream.relay`` (callbacks) when ``callbacks`` and it can, else ``forward``."""

    def __init__(self, upstream: Upstream, *, callbacks: bool) -> None:
        self.upstream = upstream
        self.callbacks = callbacks
        self.timings: list[UpstreamTiming] = []

    async def handle(self, exchange: Exchange) -> None:
        timing = UpstreamTiming()
        self.timings.append(timing)
        headers = forward_headers(
            exchange.headers,
            client_ip=exchange.client_ip or "",
            scheme=exchange.scheme,
            host=exchange.headers.get("Host"),
            drop_credential=True,
            identity={"X-Request-Id": "req-1"},
        )
        exchange.send_continue()
        if self.callbacks and self.upstream.relay(
            exchange,
            path_qs=exchange.target,
            headers=headers,
            timing=timing,
            done=lambda error: self.answer_error(exchange, error),
        ):
            return
        try:
            await self.upstream.forward(
                exchange, path_qs=exchange.target, headers=headers, timing=timing
            )
        except (UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError) as exc:
            body = {"type": type(exc).__name__, "kind": exc.kind}
            json_response(exc.status_code, body).send(exchange)
        except ClientRequestError as exc:
            body = {"type": type(exc).__name__, "reason": exc.reason}
            closing(json_response(exc.status_code, body)).send(exchange)

    def answer_error(self, exchange: Exchange, error: PermgateError | None) -> None:
        """What the callback relay's end says: an error the answer never started for."""
        if error is None or exchange.answered or exchange.gone:
            return
        if isinstance(error, ClientRequestError):
            body = {"type": type(error).__name__, "reason": error.reason}
            closing(json_response(error.status_code, body)).send(exchange)
        else:
            kind = error.kind if isinstance(error, UpstreamError) else "?"
            body = {"type": type(error).__name__, "kind": kind}
            json_response(error.status_code, body).send(exchange)

    async def refuse_unreadable(self, client_ip: str | None, status: int, reason: str) -> bytes:
        return json_response(status, {"reason": reason}).render()


class Proxy:
    """A running forwarder: its address, an aiohttp client to it, and its timings."""

    def __init__(self, forwarder: Forwarder, listener: Listener, port: int) -> None:
        self.forwarder = forwarder
        self.listener = listener
        self.host = "127.0.0.1"
        self.port = port
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{port}")
        self.responses: list[aiohttp.ClientResponse] = []

    @property
    def timings(self) -> list[UpstreamTiming]:
        return self.forwarder.timings

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.session.request(method, path, **kwargs)
        self.responses.append(response)  # released when the test ends
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("HEAD", path, **kwargs)

    async def close(self) -> None:
        for response in self.responses:
            response.release()
        await self.session.close()


@pytest.fixture
async def upstream(aiohttp_server: ServerFactory) -> TestServer:
    # The upstream observes bytes as they arrived: no inflating on its side either.
    return await aiohttp_server(upstream_app(), auto_decompress=False)


@pytest.fixture(params=["coroutine", "callbacks"])
async def make_proxy(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    """Proxies that forward with ``Upstream.forward`` only, or with ``Upstream.relay``
    whenever it can start at once (a pooled connection idle, the body here)."""
    made: list[tuple[Proxy, Upstream]] = []

    async def make(spec: str, timeout: float = 5.0, **upstream_kwargs: Any) -> Proxy:
        upstream = Upstream(spec, timeout, **upstream_kwargs)
        await upstream.start()
        forwarder = Forwarder(upstream, callbacks=request.param == "callbacks")
        listener = Listener(forwarder, head_timeout=timeout)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        await listener.serve(sock)
        proxy = Proxy(forwarder, listener, sock.getsockname()[1])
        made.append((proxy, upstream))
        return proxy

    yield make
    for proxy, upstream in made:
        await proxy.close()
        await proxy.listener.shut_down(1.0)
        await upstream.close()


@pytest.fixture
async def proxy(upstream: TestServer, make_proxy: Callable[..., Awaitable[Proxy]]) -> Proxy:
    proxy = await make_proxy(f"http://{upstream.host}:{upstream.port}", 0.3)
    if proxy.forwarder.callbacks:
        # One pooled connection idle, so the test's own requests take the callback
        # relay (it starts only on an idle connection); its timing is not the test's.
        assert (await proxy.get("/fixed")).status == 200
        proxy.forwarder.timings.clear()
    return proxy


def timings(proxy: Proxy) -> list[UpstreamTiming]:
    return proxy.timings


# --------------------------------------------------------------------------- tests

ALL_BYTES = bytes(range(256)) * 4


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", b""), ("POST", ALL_BYTES), ("PUT", ALL_BYTES), ("PATCH", b"{}"), ("DELETE", b"x")],
    ids=["get", "post", "put", "patch", "delete"],
)
async def test_method_target_and_body_pass_byte_for_byte(
    proxy: Proxy,
    method: str,
    body: bytes,
) -> None:
    """The upstream sees the client's method, raw target (still encoded) and body."""
    target = "/a/%20b/caf%C3%A9/x%3Fy%23z/100%25?q=%2F&r=..&s=%zz&t=a+b"
    response = await exchange(
        proxy.host,
        proxy.port,
        request(method, target, [("Host", "gw"), ("Content-Length", str(len(body)))], body),
    )
    assert response.status == 200
    assert response.headers["X-Seen-Method"] == method
    assert response.headers["X-Seen-Target"] == target
    assert response.body == body


async def test_content_length_upload_keeps_its_length(proxy: Proxy) -> None:
    """A body with Content-Length reaches the upstream with that length, not chunked."""
    response = await proxy.post("/x", data=b"12345")
    assert (response.headers["X-Seen-Length"], response.headers["X-Seen-Chunked"]) == ("5", "-")


async def test_chunked_upload_stays_chunked(proxy: Proxy) -> None:
    """A body of unknown length is streamed upstream chunked, never buffered to measure it."""

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    response = await proxy.post("/x", data=body())
    assert await response.read() == b"abcdef"
    assert (response.headers["X-Seen-Length"], response.headers["X-Seen-Chunked"]) == (
        "-",
        "chunked",
    )


async def test_large_upload_is_streamed_not_held(proxy: Proxy) -> None:
    """64 MB pass through while traced Python memory grows by a small fraction of that."""
    size, chunk = 64 * 1024 * 1024, os.urandom(256 * 1024)
    digest = hashlib.sha256()
    for _ in range(size // len(chunk)):
        digest.update(chunk)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        response = await proxy.post("/count", data=body())
        answer = await response.json()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer == {"bytes": size, "sha256": digest.hexdigest()}
    print(f"traced peak grew by {peak - baseline} bytes for a {size}-byte body")
    assert peak - baseline < 8 * 1024 * 1024, f"peak grew by {peak - baseline} bytes"


async def test_slow_upload_is_not_cut_by_the_read_timeout(proxy: Proxy) -> None:
    """The timeout bounds the wait for the answer, not how long the client takes to send."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            await asyncio.sleep(0.1)
            yield b"x" * 10

    response = await proxy.post("/count", data=body())
    assert (response.status, (await response.json())["bytes"]) == (200, 80)


# id, the body's framing headers, the body bytes sent before the client stalls
STALLED_UPLOADS: list[tuple[str, list[tuple[str, str]], bytes]] = [
    ("length-nothing", [("Content-Length", "100")], b""),
    ("length-part", [("Content-Length", "100")], b"x" * 10),
    ("chunked-nothing", [("Transfer-Encoding", "chunked")], b""),
    ("chunked-part", [("Transfer-Encoding", "chunked")], b"a\r\n" + b"x" * 10 + b"\r\n"),
]


@pytest.mark.parametrize(
    ("framing", "sent"), [c[1:] for c in STALLED_UPLOADS], ids=[c[0] for c in STALLED_UPLOADS]
)
async def test_stalled_upload_is_a_client_timeout_without_an_upstream_connection(
    proxy: Proxy,
    framing: list[tuple[str, str]],
    sent: bytes,
) -> None:
    """A body that stops arriving fails as ClientStalled (408) once the timeout passes
    without a byte; no upstream connection was taken for it."""
    pooled = proxy.forwarder.upstream.open_connections  # idle ones the fixture left
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(request("POST", "/count", [("Host", "gw"), *framing], sent))
        response = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert response.status == 408
    assert json.loads(response.body) == {"type": "ClientStalled", "reason": "request_timeout"}
    assert proxy.forwarder.upstream.open_connections == pooled


async def test_upload_stalled_mid_stream_closes_its_upstream_connection(
    proxy: Proxy,
) -> None:
    """A large body that stops after it began to stream upstream fails as ClientStalled,
    and the upstream connection carrying it is closed, never pooled."""
    upstream = proxy.forwarder.upstream
    head = request("POST", "/count", [("Host", "gw"), ("Content-Length", str(1 << 20))])
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(head + b"x" * (256 * 1024))
        response = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert (response.status, json.loads(response.body)) == (
        408,
        {"type": "ClientStalled", "reason": "request_timeout"},
    )
    deadline = time.monotonic() + 5
    while upstream.open_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert upstream.open_connections == 0


async def test_download_first_chunk_arrives_before_the_last_is_sent(
    proxy: Proxy,
    upstream: TestServer,
) -> None:
    """Answers stream: the client reads the first chunk while the upstream still holds the rest."""
    response = await proxy.get("/gated")
    first = await asyncio.wait_for(response.content.readany(), 2)
    assert first == b"first;"
    upstream.app[RELEASE].set()
    assert await response.read() == b"last"


async def test_long_transfer_of_timely_chunks_is_not_cut(proxy: Proxy) -> None:
    """Ten chunks each within the 0.3 s timeout make a 1 s answer that arrives whole."""
    started = time.monotonic()
    response = await proxy.get("/trickle")
    assert await response.read() == b"".join(b"%d;" % i for i in range(10))
    assert time.monotonic() - started > 0.9


async def test_slow_head_is_a_timeout(proxy: Proxy) -> None:
    """No head within timeout_seconds: UpstreamTimeout, 504, soon after the timeout."""
    started = time.monotonic()
    response = await proxy.get("/slow-head")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert await response.json() == {"type": "UpstreamTimeout", "kind": "timeout"}
    assert 0.3 <= elapsed < 2.0


async def test_slow_head_on_a_reused_connection_gets_its_whole_timeout(proxy: Proxy) -> None:
    """The upstream connection's timer outlives an exchange: a request sent on it
    later still gets its own whole timeout, never the rest of an earlier one."""
    await (await proxy.get("/peer")).read()  # the connection is now pooled, its timer armed
    await asyncio.sleep(0.2)  # the earlier exchange's deadline falls in the next one
    started = time.monotonic()
    response = await proxy.get("/slow-head")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert 0.3 <= elapsed < 2.0


async def test_connect_refused_is_unavailable(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """A closed port: UpstreamUnavailable, 502, kind connect."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = await make_proxy(f"http://127.0.0.1:{port}", 0.3)
    response = await proxy.get("/x")
    assert response.status == 502
    assert await response.json() == {"type": "UpstreamUnavailable", "kind": "connect"}


async def test_connect_timeout_is_a_timeout(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """A listener that never accepts (full backlog): UpstreamTimeout within the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the accept queue (non-blocking) so the next connect hangs in SYN_SENT.
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        try:
            proxy = await make_proxy(f"http://127.0.0.1:{port}", 0.3)
            started = time.monotonic()
            response = await proxy.get("/x")
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    if response.status == 502:
        pytest.skip("this kernel refused instead of dropping the SYN")
    assert await response.json() == {"type": "UpstreamTimeout", "kind": "timeout"}
    assert elapsed < 2.0


async def test_garbage_answer_is_a_protocol_error(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """An upstream that does not speak HTTP: UpstreamProtocolError, 502."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        proxy = await make_proxy(f"http://127.0.0.1:{port}", 1.0)
        response = await proxy.get("/x")
        assert response.status == 502
        assert await response.json() == {"type": "UpstreamProtocolError", "kind": "protocol"}


@pytest.mark.parametrize(
    ("path", "error"),
    [("/truncate", UpstreamProtocolError), ("/stall", UpstreamTimeout)],
    ids=["connection-dropped", "stalled"],
)
async def test_failure_after_answer_started_aborts_the_client(
    proxy: Proxy,
    path: str,
    error: type[Exception],
) -> None:
    """The status is already sent, so the client connection is cut and timing says why."""
    response = await exchange(proxy.host, proxy.port, request("GET", path, [("Host", "gw")]))
    assert response.status == 200
    assert not response.complete
    assert isinstance(timings(proxy)[-1].error, error)


async def test_client_leaving_mid_answer_is_not_an_upstream_error(
    proxy: Proxy,
    upstream: TestServer,
) -> None:
    """A client that hangs up mid-answer is recorded as gone, not as an upstream failure."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(request("GET", "/gated", [("Host", "gw")]))
    await reader.readuntil(b"first;")
    writer.close()
    await writer.wait_closed()
    upstream.app[RELEASE].set()
    for _ in range(50):
        if timings(proxy) and timings(proxy)[-1].total_seconds is not None:
            break
        await asyncio.sleep(0.02)
    timing = timings(proxy)[-1]
    assert (timing.client_gone, timing.error) == (True, None)


async def test_head_answer_keeps_length_and_has_no_body(proxy: Proxy) -> None:
    """HEAD passes through: the upstream's Content-Length, no body, connection reusable."""
    head = await proxy.head("/fixed")
    assert (head.status, head.headers["Content-Length"], await head.read()) == (200, "5", b"")
    get = await proxy.get("/fixed")
    assert (get.headers["Content-Length"], await get.read()) == ("5", b"hello")


async def test_hop_by_hop_request_headers_are_not_forwarded(proxy: Proxy) -> None:
    """Hop-by-hop and Connection-listed request headers stop at permgate."""
    raw = request(
        "GET",
        "/x",
        [
            ("Host", "gw"),
            ("Connection", "keep-alive, X-Client-Hop"),
            ("X-Client-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-End-To-End", "1"),
        ],
    )
    seen = (await exchange(proxy.host, proxy.port, raw)).headers["X-Seen-Headers"].split(",")
    assert "x-end-to-end" in seen
    for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen
    # aiohttp's client speaks for its own connection; it carries no client list.
    assert "connection" not in seen or "x-client-hop" not in seen


async def test_hop_by_hop_response_headers_are_not_returned(proxy: Proxy) -> None:
    """Hop-by-hop and Connection-listed answer headers stop at permgate."""
    response = await exchange(proxy.host, proxy.port, request("GET", "/hop", [("Host", "gw")]))
    assert response.headers["X-End-To-End"] == "1"
    for name in ("X-Upstream-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer"):
        assert name not in response.headers
    assert "X-Upstream-Hop" not in response.headers.get("Connection", "")


async def test_client_does_not_add_headers_of_its_own(proxy: Proxy) -> None:
    """No User-Agent, Accept or Accept-Encoding the client did not send."""
    raw = request("GET", "/x", [("Host", "gw")])
    seen = (await exchange(proxy.host, proxy.port, raw)).headers["X-Seen-Headers"].split(",")
    assert not {"user-agent", "accept", "accept-encoding", "content-type"} & set(seen)
    assert {"host", "x-forwarded-for", "x-request-id"} <= set(seen)


async def test_compressed_bodies_pass_untouched(proxy: Proxy) -> None:
    """Neither the request nor the answer body is inflated on the way."""
    import gzip

    payload = gzip.compress(b"hello" * 100)
    response = await proxy.post(
        "/x", data=payload, headers={"Content-Encoding": "gzip"}, auto_decompress=False
    )
    assert await response.read() == payload


async def test_timing_is_reported(proxy: Proxy) -> None:
    """A passed UpstreamTiming gets the head and total durations and the bytes sent."""
    await (await proxy.get("/fixed")).read()
    timing = timings(proxy)[-1]
    assert timing.head_seconds is not None and timing.total_seconds is not None
    assert 0 <= timing.head_seconds <= timing.total_seconds
    assert (timing.bytes_down, timing.error, timing.client_gone) == (5, None, False)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short directory: a unix socket path must fit in 108 bytes."""
    path = tempfile.mkdtemp(prefix="pg-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_unix_socket_upstream(
    socket_dir: str,
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """``unix:/path`` upstreams are forwarded to like TCP ones."""
    path = os.path.join(socket_dir, "up.sock")
    runner = web.AppRunner(upstream_app())
    await runner.setup()
    try:
        await web.UnixSite(runner, path).start()
        proxy = await make_proxy(f"unix:{path}", 1.0)
        raw = request(
            "POST", "/a/%20b?x=1", [("Host", "gw"), ("Content-Length", "9")], b"over unix"
        )
        response = await exchange(proxy.host, proxy.port, raw)
        assert response.headers["X-Seen-Target"] == "/a/%20b?x=1"
        assert response.body == b"over unix"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "spec",
    ["ftp://h:1", "http://", "http://h:1/prefix", "unix:relative.sock", "127.0.0.1:8000"],
    ids=["scheme", "no-host", "path", "relative-unix", "no-scheme"],
)
def test_bad_upstream_spec_is_a_config_error(spec: str) -> None:
    """A spec permgate cannot forward to is refused when the Upstream is built."""
    with pytest.raises(ConfigError, match="upstream"):
        Upstream(spec, 1.0)


async def test_forward_before_start_is_a_programming_error(upstream: TestServer) -> None:
    """forward() without start() fails loudly instead of creating a session per call."""
    up = Upstream(f"http://{upstream.host}:{upstream.port}", 1.0)
    with pytest.raises(RuntimeError, match="start"):
        await up.forward(None, path_qs="/", headers=CIMultiDict())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the pool
# Connection reuse, retry and framing, against upstreams that misbehave on purpose.

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[tuple[str, list[int]]]:
    """A plain-socket upstream; ``handler`` gets each connection and its number (0, 1, ...).
    Yields the spec and the list of connection numbers accepted so far."""
    accepted: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(accepted)
        accepted.append(index)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", accepted
    finally:
        for task in list(tasks):
            task.cancel()
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request head plus its Content-Length body (tests send no chunked bodies here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            head += await reader.readexactly(int(line.split(b":")[1]))
    return head


def answer(body: bytes, *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_keepalive_connection_is_reused(proxy: Proxy) -> None:
    """Sequential requests, HEAD and a streamed upload among them, share one upstream
    connection: the pool gives it back after each complete answer."""
    ports = {await (await proxy.get("/peer")).text() for _ in range(3)}
    await (await proxy.head("/peer")).read()
    await (await proxy.post("/count", data=b"x" * 100_000)).read()
    ports.add(await (await proxy.get("/peer")).text())
    assert len(ports) == 1


async def test_connection_close_answer_is_not_reused(proxy: Proxy) -> None:
    """An answer with 'Connection: close' ends its connection: the next request opens one."""
    first = await (await proxy.get("/close")).text()
    second = await (await proxy.get("/close")).text()
    assert first != second


async def test_http10_answer_without_keepalive_is_not_reused(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """An HTTP/1.0 answer without 'Connection: keep-alive' is not pooled, even with a length."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
            await writer.drain()

    async with raw_upstream(serve) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        bodies = [await (await proxy.get("/x")).read() for _ in range(3)]
    assert (bodies, accepted) == ([b"0", b"1", b"2"], [0, 1, 2])


def stale_after_first(answers: list[bytes]) -> RawHandler:
    """Answers the first request on a connection; reads the second and hangs up silently,
    as an upstream does when its idle timeout races with a reused connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        answers.append(await read_request(reader))
        writer.write(answer(b"conn %d" % n))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: never answered
        writer.transport.abort()

    return serve


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "DELETE"])
async def test_idempotent_request_on_a_stale_connection_is_retried_once(
    make_proxy: Callable[..., Awaitable[Proxy]],
    method: str,
) -> None:
    """A pooled connection closed before any answer byte: an idempotent, body-less request
    is sent again on a fresh connection, and succeeds."""
    async with raw_upstream(stale_after_first([])) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        assert await (await proxy.get("/one")).read() == b"conn 0"
        second = await proxy.request(method, "/two")
        assert second.status == 200
        assert await second.read() == (b"" if method == "HEAD" else b"conn 1")
    assert accepted == [0, 1]


@pytest.mark.parametrize(
    ("method", "body"),
    [("POST", b""), ("POST", b"payload"), ("PATCH", b"{}"), ("PUT", b"payload")],
    ids=["post-empty", "post", "patch", "put-with-body"],
)
async def test_other_requests_on_a_stale_connection_are_not_retried(
    make_proxy: Callable[..., Awaitable[Proxy]],
    method: str,
    body: bytes,
) -> None:
    """Not idempotent, or a body already taken from the client: 502, never sent twice."""
    async with raw_upstream(stale_after_first([])) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        assert await (await proxy.get("/one")).read() == b"conn 0"
        response = await proxy.request(method, "/two", data=body)
        assert response.status == 502
        assert await response.json() == {"type": "UpstreamUnavailable", "kind": "connect"}
        assert await (await proxy.get("/three")).read() == b"conn 1"  # the pool recovers
    assert accepted == [0, 1]


async def test_fresh_connection_closed_before_answering_is_not_retried(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """On a new connection there is nothing stale to blame: 502 at once, one attempt."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.transport.abort()

    async with raw_upstream(serve) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        response = await proxy.get("/x")
        assert (response.status, accepted) == (502, [0])


@pytest.mark.parametrize("late", [False, True], ids=["same-packet", "while-idle"])
async def test_bytes_after_an_answer_never_reach_the_next_request(
    make_proxy: Callable[..., Awaitable[Proxy]],
    late: bool,
) -> None:
    """An upstream that sends a second, unsolicited answer (response splitting): the
    connection is dropped, and the next request gets its own answer, not that one."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n > 0:
            writer.write(answer(b"fresh %d" % n))
            await writer.drain()
            return
        writer.write(answer(b"first"))
        if late:
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(answer(b"smuggled"))
        await writer.drain()
        await reader.read()  # whatever comes next is not answered here

    async with raw_upstream(serve) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        assert await (await proxy.get("/a")).read() == b"first"
        await asyncio.sleep(0.2)
        assert await (await proxy.get("/b")).read() == b"fresh 1"
    assert accepted == [0, 1]


async def test_interim_1xx_answers_are_skipped(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """100 and 103 before the final answer are not relayed; the final one is, whole,
    and the connection stays usable."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
            writer.write(answer(b"final", "X-Final: 1"))
            await writer.drain()

    async with raw_upstream(serve) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        for _ in range(2):
            raw = await exchange(proxy.host, proxy.port, request("GET", "/x", [("Host", "gw")]))
            assert (raw.status, raw.body, raw.headers["X-Final"]) == (200, b"final", "1")
            assert "Link" not in raw.headers
    assert accepted == [0]


async def test_chunked_answer_with_trailers(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """A chunked answer is re-framed (chunked again) with its body intact; its trailers
    and the 'Trailer' announcement are hop-by-hop and dropped; the connection is reused."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
            )
            await writer.drain()

    async with raw_upstream(serve) as (spec, accepted):
        proxy = await make_proxy(spec, 1.0)
        for _ in range(2):
            raw = await exchange(proxy.host, proxy.port, request("GET", "/x", [("Host", "gw")]))
            assert (raw.status, raw.body, raw.complete) == (200, b"hello world", True)
            assert raw.headers["Transfer-Encoding"] == "chunked"
            assert "Trailer" not in raw.headers and "X-Checksum" not in raw.headers
    assert accepted == [0]


async def test_head_is_relayed_before_a_late_body(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """An answer whose body comes later than its head: the client has the head at once,
    on a fresh connection and on a pooled one alike (the callback relay's case)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.write(b"4\r\nlate\r\n0\r\n\r\n")
            await writer.drain()

    async with raw_upstream(serve) as (spec, accepted):
        proxy = await make_proxy(spec, 2.0)
        for _ in range(2):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            try:
                writer.write(request("GET", "/x", [("Host", "gw")]))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
                assert head.startswith(b"HTTP/1.1 200 ")
                body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 2)
                assert b"late" in body
            finally:
                writer.close()
    assert accepted == [0]


async def test_answer_framed_by_close_is_relayed_whole(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """No Content-Length, not chunked: the body runs to the end of the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")
        await writer.drain()

    async with raw_upstream(serve) as (spec, _):
        proxy = await make_proxy(spec, 1.0)
        raw = await exchange(proxy.host, proxy.port, request("GET", "/x", [("Host", "gw")]))
        assert (raw.status, raw.body, raw.complete) == (200, b"until the end", True)
        assert timings(proxy)[-1].error is None


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 2xx OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
    ids=["length-and-chunked", "two-lengths", "switching-protocols", "bad-status", "bad-header"],
)
async def test_malformed_head_is_a_protocol_error(
    make_proxy: Callable[..., Awaitable[Proxy]],
    head: bytes,
) -> None:
    """Answers two parsers could read differently, or that permgate cannot relay: 502."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(head)
        await writer.drain()
        await reader.read()

    async with raw_upstream(serve) as (spec, _):
        proxy = await make_proxy(spec, 1.0)
        response = await proxy.get("/x")
        assert response.status == 502
        assert await response.json() == {"type": "UpstreamProtocolError", "kind": "protocol"}


async def test_bad_chunk_after_the_head_aborts_the_client(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """Broken chunked framing once the answer started: the client is cut, timing says why."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz\r\nnot a chunk\r\n")
        await writer.drain()
        await reader.read()

    async with raw_upstream(serve) as (spec, _):
        proxy = await make_proxy(spec, 1.0)
        raw = await exchange(proxy.host, proxy.port, request("GET", "/x", [("Host", "gw")]))
        assert (raw.status, raw.complete) == (200, False)
        assert isinstance(timings(proxy)[-1].error, UpstreamProtocolError)


async def test_slow_client_download_is_bounded_and_not_a_timeout(proxy: Proxy) -> None:
    """A client that stops reading for longer than the upstream timeout: permgate stops
    reading the upstream instead of buffering (traced memory stays small), no timeout
    fires while the client is the slow one, and the answer arrives whole."""
    n = 128  # 32 MB
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port, limit=64 * 1024)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        writer.write(request("GET", f"/big?n={n}", [("Host", "gw"), ("Connection", "close")]))
        received = len(await reader.readexactly(1024 * 1024))
        await asyncio.sleep(1.0)  # the client stalls: 3x the upstream timeout
        stalled_peak = tracemalloc.get_traced_memory()[1]
        while chunk := await asyncio.wait_for(reader.read(1024 * 1024), 10):
            received += len(chunk)
            tail = chunk[-5:]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.close()
    # headers + chunked framing around 32 MB of body
    assert received > n * len(BIG_CHUNK) and tail == b"0\r\n\r\n"
    print(f"traced peak grew by {stalled_peak - baseline} (stalled) / {peak - baseline} bytes")
    assert peak - baseline < 8 * 1024 * 1024, f"grew by {peak - baseline}"
    timing = timings(proxy)[-1]
    assert (timing.error, timing.bytes_down) == (None, n * len(BIG_CHUNK))


async def test_pool_limit_queues_requests_within_the_timeout(
    upstream: TestServer,
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """max_connections=1: concurrent requests take turns on the one connection."""
    proxy = await make_proxy(f"http://{upstream.host}:{upstream.port}", 2.0, max_connections=1)
    texts = await asyncio.gather(*(_text(proxy.get("/peer")) for _ in range(5)))
    assert len(set(texts)) == 1


async def test_pool_exhausted_for_longer_than_the_timeout_is_a_timeout(
    upstream: TestServer,
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """The one connection is held by a slow answer: the next request gets 504 in time."""
    proxy = await make_proxy(f"http://{upstream.host}:{upstream.port}", 0.3, max_connections=1)
    slow = asyncio.ensure_future(proxy.get("/trickle"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    response = await proxy.get("/fixed")
    assert response.status == 504
    assert time.monotonic() - started < 2.0
    assert (await slow).status == 200


async def _text(pending: Awaitable[Any]) -> str:
    response = await pending
    return str(await response.text())


async def test_bodyless_post_gets_a_zero_length(proxy: Proxy) -> None:
    """A POST without body or length reaches the upstream with 'Content-Length: 0'
    (what aiohttp's client sent), never chunked and never waiting for a body."""
    raw = await exchange(proxy.host, proxy.port, request("POST", "/x", [("Host", "gw")]))
    assert (raw.headers["X-Seen-Length"], raw.headers["X-Seen-Chunked"]) == ("0", "-")


async def test_request_without_host_gets_the_upstream_authority(
    proxy: Proxy,
    upstream: TestServer,
) -> None:
    """An HTTP/1.0 client may omit Host; HTTP/1.1 to the upstream requires one."""
    raw = b"GET /x HTTP/1.0\r\n\r\n"
    response = await exchange(proxy.host, proxy.port, raw)
    assert response.status == 200
    assert "host" in response.headers["X-Seen-Headers"].split(",")


async def test_upstream_answering_before_reading_the_upload(
    make_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    """An early answer (413 before the body was read) is relayed; that connection is not
    pooled, since the upload on it never finished."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await asyncio.sleep(0.5)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536
            await asyncio.sleep(0.01)

    async with raw_upstream(serve) as (spec, _):
        proxy = await make_proxy(spec, 2.0)
        response = await proxy.post("/upload", data=body())
        assert (response.status, await response.read()) == (413, b"big")


async def test_client_leaving_mid_upload_is_recorded_as_gone(proxy: Proxy) -> None:
    """A client that promises a megabyte, sends a little and hangs up: the upstream
    connection is dropped, timing says the client left, and the pool keeps working."""
    _reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(request("POST", "/count", [("Host", "gw"), ("Content-Length", "1000000")]))
    writer.write(b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()
    for _ in range(100):
        if timings(proxy) and timings(proxy)[-1].total_seconds is not None:
            break
        await asyncio.sleep(0.02)
    assert timings(proxy)[-1].client_gone
    assert (await proxy.get("/fixed")).status == 200
