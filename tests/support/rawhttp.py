"""Send raw bytes to an HTTP server and parse its answer, for tests only.

Hygiene tests must send request lines and headers that no HTTP client library would
produce (``GET /a/../b``, two ``Content-Length`` headers, a raw backslash), so they
talk to the server over a plain socket and read the answer back themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from multidict import CIMultiDict


@dataclass(frozen=True, slots=True)
class RawResponse:
    """One parsed HTTP/1.x answer; ``complete`` is False when the body was cut short."""

    status: int
    reason: str
    headers: CIMultiDict[str] = field(repr=False)
    body: bytes
    complete: bool = True
    head: bytes = field(default=b"", repr=False)  # the status line and headers as sent

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def raw(self) -> bytes:
        """Everything the server sent for this answer (head and body)."""
        return self.head + self.body


def request(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    """Build request bytes verbatim: nothing is normalised, quoted or de-duplicated."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers or [("Host", "test")]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "surrogateescape") + body


async def exchange(host: str, port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse:
    """Write ``data`` on a fresh connection and read exactly one answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """Parse one answer: Content-Length, chunked, or read-until-close framing."""
    raw = [await reader.readuntil(b"\r\n")]
    status_line = raw[0].decode("latin-1").rstrip("\r\n")
    _version, status, *reason = status_line.split(" ", 2)
    headers: CIMultiDict[str] = CIMultiDict()
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        raw.append(line)
        name, _, value = line.decode("latin-1").partition(":")
        headers.add(name.strip(), value.strip())
    raw.append(line)
    code = int(status)
    text = reason[0] if reason else ""
    if head or code in (204, 304) or 100 <= code < 200:
        return RawResponse(code, text, headers, b"", head=b"".join(raw))
    body, complete = await _read_body(reader, headers)
    return RawResponse(code, text, headers, body, complete, head=b"".join(raw))


async def exchange_to_close(
    host: str, port: int, data: bytes, *, timeout: float = 5.0
) -> tuple[RawResponse, bytes]:
    """Write ``data`` on a fresh connection, read one answer, then read on until the
    server closes the connection; returns the answer and whatever followed it.
    Raises TimeoutError when the server keeps the connection open past ``timeout``."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            response = await read_response(reader)
            rest = b""
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    rest += chunk
        return response, rest
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_body(reader: asyncio.StreamReader, headers: CIMultiDict[str]) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    try:
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            return b"".join(parts), True
        if (length := headers.get("Content-Length")) is not None:
            return await reader.readexactly(int(length)), True
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
        return b"".join(parts) + partial, False
    return await reader.read(), True
