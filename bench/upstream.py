"""A fast HTTP/1.1 upstream for the load benchmark: one fixed JSON answer on any path.

    .venv/bin/python bench/upstream.py PORT

A raw asyncio protocol on uvloop, not an aiohttp server: the benchmark measures the
proxy in front of it, so the upstream must cost as little as possible per request
(it is measured alone in every run to show it is not the bottleneck). It parses
just enough HTTP for keep-alive clients that send one request at a time or pipeline:
heads end at a blank line, a ``Content-Length`` body is skipped, ``Connection:
close`` is honoured. Chunked request bodies are not supported (the benchmark sends
none).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Final, cast

BODY: Final = (
    b'{"locator":"01HZX5Q7R4J8K2M6N9P3T5V7W9","tenant":"acme-prod","state":"draft",'
    b'"productName":"PersonalAuto","currency":"USD","startTime":"2026-01-01T00:00:00Z",'
    b'"premium":{"total":"1234.56"},"version":3}'
)
RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class FixedAnswer(asyncio.Protocol):
    """Answers every complete request head in the buffer with :data:`RESPONSE`."""

    __slots__ = ("_buffer", "_skip", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._skip = 0  # body bytes still to discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # uvloop sets it already; the default loop does not
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._skip:
            take = min(self._skip, len(data))
            self._skip -= take
            data = data[take:]
        buffer = self._buffer + data if self._buffer else data
        answers = 0
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            buffer = buffer[end + 4 :]
            answers += 1
            length = _content_length(head)
            if length:
                take = min(length, len(buffer))
                buffer = buffer[take:]
                self._skip = length - take
            if b"connection: close" in head:
                close = True
                break
        self._buffer = buffer
        transport = self._transport
        assert transport is not None
        if answers:
            transport.write(RESPONSE * answers)
        if close:
            transport.close()


def _content_length(head: bytes) -> int:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    return int(head[start : end if end >= 0 else None].strip() or 0)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedAnswer, "127.0.0.1", port, backlog=1024)
    print(f"upstream listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Serve on the port given as the only argument until killed."""
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
