"""permgate as real processes: `permgate demo`, and `permgate serve` draining on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway_procs import serve_sqlite
from harness import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


async def _read_until(stream: asyncio.StreamReader, marker: str, timeout: float = 60) -> str:
    text = ""
    deadline = time.monotonic() + timeout
    while marker not in text:
        line = await asyncio.wait_for(stream.readline(), timeout=deadline - time.monotonic())
        if not line:
            raise AssertionError(f"process ended before {marker!r}; output so far:\n{text}")
        text += line.decode()
    return text


async def test_demo_prints_curl_lines_that_show_each_outcome() -> None:
    """`permgate demo` on a fresh temp store: the printed lines give 200, 401, 403, 403."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "permgate",
        "demo",
        "--port",
        "0",
        "--admin-port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        text = await _read_until(process.stdout, "Press Ctrl-C")
        secrets = dict(re.findall(r"^([A-Z]+)=(pgt_\S+)$", text, re.MULTILINE))
        curls = re.findall(r"^curl (.*)$", text, re.MULTILINE)
        results = []
        async with aiohttp.ClientSession() as http:
            for line in curls[:6]:
                method = "POST" if "-X POST" in line else "GET"
                url = line.split()[-1]
                headers = {}
                if auth := re.search(r"Bearer \$([A-Z]+)", line):
                    headers["Authorization"] = f"Bearer {secrets[auth.group(1)]}"
                async with http.request(method, url, headers=headers) as response:
                    body = await response.read()
                    reason = orjson.loads(body).get("reason") if response.status >= 400 else None
                    results.append((response.status, reason))
        assert results == [
            (200, None),
            (401, "missing_credentials"),
            (403, "tenant_out_of_scope"),
            (403, "missing_permission"),
            (201, None),
            (200, None),
        ]
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


@pytest.fixture
async def slow_upstream() -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream whose /slow answers after one second; records what completed."""
    done: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        done.append(request.path)
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_get("/slow/{tenant}", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", done
    await runner.cleanup()


async def test_sigterm_finishes_in_flight_requests_then_exits(
    tmp_path: Path, slow_upstream: tuple[str, list[str]]
) -> None:
    """On SIGTERM the gateway stops accepting, finishes what it started, writes its
    audit events and exits 0."""
    upstream_url, done = slow_upstream
    async with serve_sqlite(tmp_path, upstream_url) as served, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        in_flight = asyncio.create_task(http.get(served.url + "/slow/acme-prod", headers=headers))
        await asyncio.sleep(0.3)
        served.process.send_signal(signal.SIGTERM)
        response = await in_flight
        assert response.status == 200
        assert await response.json() == {"slow": True}
        response.release()
        assert await asyncio.wait_for(served.process.wait(), timeout=30) == 0
    assert done == ["/slow/acme-prod"]
    decisions = [e for e in served.events() if e["event"] == "decision"]
    assert [(e["endpoint"], e["status"]) for e in decisions] == [("slow", 200)]
