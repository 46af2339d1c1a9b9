"""The deciding listeners' own HTTP/1.1 server (permgate.gateway.http1), on the wire:
pipelined requests answered in order, ``Expect: 100-continue``, bodies streamed both
ways with bounded memory, and a client that leaves before its answer.

Every case talks raw bytes to a real gateway (tests/support/harness.py) in front of the
real echo upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import yarl
from aiohttp import web

from harness import Gateway, eventually, free_port, start_gateway
from rawhttp import read_response, request


def address(gw: Gateway) -> tuple[str, int]:
    url = yarl.URL(gw.url)
    assert url.host is not None and url.port is not None
    return url.host, url.port


def bearer(gw: Gateway, who: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {gw.tokens[who]}")


def events(gw: Gateway) -> list[dict[str, Any]]:
    parsed = [orjson.loads(line) for line in gw.audit_lines()]
    return [e for e in parsed if e.get("event") == "decision"]


async def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    """Three requests in one write: a slow forwarded one, a refusal decided at once, a
    fast forwarded one. The answers come in the order the requests were sent, each
    with its own request id, on the one connection."""
    gw.upstream.slow_seconds = 0.3
    raw = (
        request(
            "GET", "/slow/acme-prod", [("Host", "gw"), bearer(gw, "bob"), ("X-Request-Id", "r1")]
        )
        + request("GET", "/policy/acme-prod/quotes/Q-1", [("Host", "gw"), ("X-Request-Id", "r2")])
        + request("GET", "/health", [("Host", "gw"), ("X-Request-Id", "r3")])
    )
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(raw)
        answers = [await asyncio.wait_for(read_response(reader), 5) for _ in range(3)]
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 401, 200]
    assert orjson.loads(answers[0].body) == {"slow": True}
    assert orjson.loads(answers[1].body)["request_id"] == "r2"
    assert [s["headers"]["X-Request-ID"] for s in gw.upstream.seen] == ["r3"]


async def test_expect_continue_gets_100_before_the_body_is_sent(gw: Gateway) -> None:
    """An allowed request with ``Expect: 100-continue`` is told to go on (an interim
    100) before it sends its body; the body then reaches the upstream whole, and the
    upstream never sees the Expect header."""
    head = request(
        "POST",
        "/policy/acme-prod/quotes",
        [
            ("Host", "gw"),
            bearer(gw, "alice"),
            ("Content-Length", "9"),
            ("Expect", "100-continue"),
        ],
    )
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(head)
        interim = await asyncio.wait_for(read_response(reader), 5)
        assert interim.status == 100
        writer.write(b'{"a":1,2}')
        final = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert final.status == 200, final.text
    seen = gw.upstream.seen[-1]
    assert seen["body"] == '{"a":1,2}'
    assert "Expect" not in seen["headers"]


async def test_refused_request_expecting_continue_gets_no_100_and_is_closed(gw: Gateway) -> None:
    """A request refused on its head (no credential) is answered without a 100: its body
    was never asked for, so the connection ends after the answer (the bytes after it
    could be that body or a new request)."""
    head = request(
        "POST",
        "/policy/acme-prod/quotes",
        [("Host", "gw"), ("Content-Length", "9"), ("Expect", "100-continue")],
    )
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(head)
        answer = await asyncio.wait_for(read_response(reader), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert (answer.status, answer.headers["Connection"], rest) == (401, "close", b"")


async def test_refusal_before_the_body_arrives_keeps_the_connection(gw: Gateway) -> None:
    """A refused request whose small body arrives after the answer: the body is read and
    dropped, and the next request on the connection is served."""
    head = request("POST", "/policy/acme-prod/quotes", [("Host", "gw"), ("Content-Length", "5")])
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(head)
        first = await asyncio.wait_for(read_response(reader), 5)
        writer.write(b"hello" + request("GET", "/health", [("Host", "gw")]))
        second = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert (first.status, second.status) == (401, 200)
    assert gw.upstream.seen[-1]["raw_path"] == "/health"


async def test_large_upload_is_streamed_with_bounded_memory(gw: Gateway) -> None:
    """A 24 MB upload goes through whole while the gateway holds only a bounded part of
    it at a time (reading the client pauses while the upstream is behind)."""
    size = 24 * 1024 * 1024
    head = request(
        "PUT",
        "/files/acme-prod/upload",
        [("Host", "gw"), bearer(gw, "alice"), ("Content-Length", str(size))],
    )
    block = b"x" * (1024 * 1024)
    reader, writer = await asyncio.open_connection(*address(gw))
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        writer.write(head)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        response = await asyncio.wait_for(read_response(reader), 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.close()
    assert response.status == 200, response.text
    assert orjson.loads(response.body) == {"received": size}
    assert peak - baseline < 8 * 1024 * 1024, f"grew by {peak - baseline}"


async def test_download_is_relayed_as_it_arrives(gw: Gateway) -> None:
    """The upstream's first chunk reaches the client while the upstream still holds
    back the last one."""
    raw = request("GET", "/files/acme-prod/download", [("Host", "gw"), bearer(gw, "alice")])
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding: chunked" in head.lower()
        first = await asyncio.wait_for(reader.readuntil(b"first-chunk\n"), 5)
        assert first.endswith(b"first-chunk\n")
        gw.upstream.release.set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    finally:
        writer.close()
    assert b"last-chunk\n" in rest


async def test_client_leaving_before_its_answer_is_recorded_as_gone(gw: Gateway) -> None:
    """A client that hangs up while the upstream is still answering: the outcome says
    client_gone (status 499), the upstream request is dropped, and the gateway serves on."""
    gw.upstream.slow_seconds = 0.5
    raw = request("GET", "/slow/acme-prod", [("Host", "gw"), bearer(gw, "bob")])
    _reader, writer = await asyncio.open_connection(*address(gw))
    writer.write(raw)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()

    def gone() -> list[dict[str, Any]]:
        return [e for e in events(gw) if e.get("reason") == "client_gone"]

    found = await eventually(gone, "the client_gone event")
    assert found[0]["status"] == 499
    await eventually(
        lambda: gw.runtime.upstream.open_connections == 0, "the upstream request to be dropped"
    )
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(request("GET", "/health", [("Host", "gw")]))
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_unreadable_request_after_a_good_one_is_answered_after_it(gw: Gateway) -> None:
    """A pipelined request the parser refuses is answered (400, JSON, Connection: close)
    only after the answer to the request before it, and the connection then ends."""
    raw = request("GET", "/health", [("Host", "gw")]) + b"GET /health HTTP/1.1\nHost: gw\n\n"
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(raw)
        first = await asyncio.wait_for(read_response(reader), 5)
        second = await asyncio.wait_for(read_response(reader), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert first.status == 200
    assert (second.status, orjson.loads(second.body)["reason"]) == (400, "malformed_request")
    assert (second.headers["Connection"], rest) == ("close", b"")


BIG_CHUNK = b"y" * (256 * 1024)


async def big_download(request: web.Request) -> web.StreamResponse:
    """128 chunks of 256 KB (32 MB), written as fast as the reader takes them."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for _ in range(128):
        await response.write(BIG_CHUNK)
    await response.write_eof()
    return response


async def test_slow_reader_holds_a_bounded_part_of_the_download(tmp_path: Path) -> None:
    """A client that stops reading for longer than the upstream timeout: the gateway stops
    reading the upstream instead of buffering (memory stays bounded), no timeout fires
    while the client is the slow one, and the download arrives whole."""
    app = web.Application()
    app.router.add_get("/files/{tenant}/download", big_download)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with start_gateway(
            tmp_path, f"http://127.0.0.1:{port}", upstream_timeout_seconds=0.5
        ) as gw:
            raw = request(
                "GET",
                "/files/acme-prod/download",
                [("Host", "gw"), bearer(gw, "alice"), ("Connection", "close")],
            )
            reader, writer = await asyncio.open_connection(*address(gw), limit=64 * 1024)
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                writer.write(raw)
                received = len(await reader.readexactly(1024 * 1024))
                await asyncio.sleep(1.5)  # the client stalls: 3x the upstream timeout
                while chunk := await asyncio.wait_for(reader.read(1024 * 1024), 10):
                    received += len(chunk)
                    tail = chunk[-5:]
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                writer.close()
            assert received > 128 * len(BIG_CHUNK) and tail == b"0\r\n\r\n"
            assert peak - baseline < 8 * 1024 * 1024, f"grew by {peak - baseline}"
            found = await eventually(
                lambda: [e for e in events(gw) if e.get("endpoint") == "files.download"],
                "the download's audit event",
            )
            assert (found[0]["status"], found[0]["upstream_error"]) == (200, None)
    finally:
        await runner.cleanup()


async def test_refused_request_whose_body_never_comes_is_closed_in_time(tmp_path: Path) -> None:
    """A refused request whose announced body never arrives: after its answer the
    connection waits for that body at most the head timeout, then ends."""
    async with start_gateway(tmp_path, upstream_timeout_seconds=0.5) as gw:
        head = request(
            "POST", "/policy/acme-prod/quotes", [("Host", "gw"), ("Content-Length", "5")]
        )
        reader, writer = await asyncio.open_connection(*address(gw))
        try:
            writer.write(head)
            answer = await asyncio.wait_for(read_response(reader), 5)
            started = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), 5)
            waited = time.monotonic() - started
        finally:
            writer.close()
        assert (answer.status, rest) == (401, b"")
        assert 0.3 <= waited < 3.0


# --------------------------------------------------------------------------- the protocol alone


class _Collect:
    """A handler that keeps each request and answers it 200 at once."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def handle(self, exchange: Any) -> None:
        self.seen.append(exchange)
        exchange.respond(200, b"", b"ok")

    async def refuse_unreadable(self, client_ip: str | None, status: int, reason: str) -> bytes:
        return b"HTTP/1.1 %d X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" % status


class _Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.out += data

    def close(self) -> None:
        self.closed = True


def _connection(head_timeout: float = 5.0) -> tuple[Any, _Collect, _Wire]:
    from permgate.gateway.http1 import ServerProtocol

    handler = _Collect()
    protocol = ServerProtocol(handler, head_timeout=head_timeout, connections=set())
    wire = _Wire()
    protocol.connection_made(wire)
    return protocol, handler, wire


async def test_head_bytes_that_are_not_utf8_are_kept_as_surrogate_escapes() -> None:
    """A value with bytes that are not UTF-8 (obs-text) reaches the handler as the same
    text as always: each such byte a surrogate escape, nothing lost; UTF-8 as text."""
    protocol, handler, _ = _connection()
    protocol.data_received(
        b"GET /a HTTP/1.1\r\nHost: gw\r\nX-Name: caf\xe9\r\nX-Text: caf\xc3\xa9\r\n\r\n"
    )
    (exchange,) = handler.seen
    assert exchange.headers["X-Name"] == "caf\udce9"
    assert exchange.headers["X-Text"] == "caf\xe9"
    protocol.connection_lost(None)


async def test_body_framing_is_found_whatever_the_other_headers() -> None:
    """A body is announced by Content-Length (not 0) or Transfer-Encoding in any case;
    other names of the same lengths announce none."""
    cases = [
        (b"If-Modified-Since: x\r\nAccept-Charset: y\r\n", False),
        (b"content-length: 0\r\n", False),
        (b"CONTENT-LENGTH: 2\r\n", True),
        (b"transfer-encoding: chunked\r\n", True),
    ]
    for lines, has_body in cases:
        protocol, handler, _ = _connection()
        body = b"ok" if b"2" in lines else b"0\r\n\r\n" if b"chunked" in lines else b""
        protocol.data_received(b"POST /a HTTP/1.1\r\nHost: gw\r\n" + lines + b"\r\n" + body)
        (exchange,) = handler.seen
        assert exchange.has_body is has_body, lines
        protocol.connection_lost(None)


async def test_head_begun_after_a_whole_request_in_one_read_is_timed() -> None:
    """A pipelined head that begins in the read that held the request before it is
    timed from that read: it is answered 408 when it does not come whole in time."""
    protocol, handler, wire = _connection(head_timeout=0.05)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHo")
    assert len(handler.seen) == 1
    await eventually(lambda: wire.closed or None, "the connection closed")
    assert wire.out.count(b"HTTP/1.1 200 ") == 1
    assert b"HTTP/1.1 408 " in wire.out
    protocol.connection_lost(None)


async def test_version_and_keep_alive_whatever_the_connection_headers() -> None:
    """The version the handler sees is the request's, with or without Connection
    headers; HTTP/0.9 and 2.0 are refused even when they ask to be kept alive."""
    cases = [
        (b"1.1", b"", ((1, 1), True)),
        (b"1.1", b"Connection: close\r\n", ((1, 1), False)),
        (b"1.0", b"", ((1, 0), False)),
        (b"1.0", b"Connection: keep-alive\r\n", ((1, 0), True)),
        (b"1.0", b"proxy-connection: keep-alive\r\n", ((1, 0), True)),
        (b"2.0", b"Connection: keep-alive\r\n", None),
        (b"2.0", b"", None),
        (b"0.9", b"Proxy-Connection: keep-alive\r\n", None),
    ]
    for version, lines, expected in cases:
        protocol, handler, wire = _connection()
        protocol.data_received(b"GET /a HTTP/" + version + b"\r\nHost: gw\r\n" + lines + b"\r\n")
        if expected is None:
            assert handler.seen == [], version
            await eventually(lambda w=wire: b"HTTP/1.1 400 " in w.out or None, "the refusal")
        else:
            (exchange,) = handler.seen
            assert (exchange.version, exchange.keep_alive) == expected, (version, lines)
        protocol.connection_lost(None)
