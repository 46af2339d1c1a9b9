"""The ceiling of permgate's stack: an aiohttp pass-through proxy that decides nothing.

    .venv/bin/python bench/bare_proxy.py PORT UPSTREAM_URL [--stream]

aiohttp's low-level server (as permgate's gateway listener) plus one pooled
``ClientSession`` (tuned like ``permgate.gateway.proxy.Upstream``: no cookie jar, no
decompression, no auto headers, DNS cached) on uvloop. It forwards method, raw
path and query, headers minus hop-by-hop ones, and the body streamed from the
client. The answer is read whole and sent in one ``web.Response`` (the cheapest
way for small answers); ``--stream`` relays it chunk by chunk with a
``StreamResponse`` instead, as permgate does, to price that difference alone.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class BareProxy:
    """Forward everything to ``origin``; the handler of a ``web.Server``."""

    def __init__(self, origin: str, *, stream: bool) -> None:
        self._origin = origin.rstrip("/")
        self._stream = stream
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the pooled session inside the running loop."""
        connector = aiohttp.TCPConnector(
            limit=1024, limit_per_host=0, use_dns_cache=True, ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30, sock_connect=30),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """One request in, one answer out; 502 when the upstream cannot be reached."""
        assert self._session is not None
        url = URL(self._origin + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=_end_to_end(request.headers),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                headers = _end_to_end(upstream.headers)
                if not self._stream:
                    body = await upstream.read()
                    headers.popall("Content-Length", None)
                    return web.Response(
                        status=upstream.status, reason=upstream.reason, body=body, headers=headers
                    )
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=headers
                )
                await response.prepare(request)
                while chunk := await upstream.content.readany():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError):
            return web.Response(status=502, text="bad gateway")


async def _serve(port: int, upstream: str, stream: bool) -> None:
    proxy = BareProxy(upstream, stream=stream)
    await proxy.start()
    runner = web.ServerRunner(web.Server(proxy.handle, auto_decompress=False), handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"bare proxy listening on 127.0.0.1:{port} -> {upstream}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("upstream", help="http://127.0.0.1:PORT")
    parser.add_argument("--stream", action="store_true", help="relay the answer chunk by chunk")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args.port, args.upstream, args.stream))


if __name__ == "__main__":
    main()
