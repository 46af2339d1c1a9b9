"""The log of a real `permgate serve`: JSON lines off a terminal (text on demand), an
access line per request carrying its request id, a shutdown line with the number of
requests drained, one warning (not one per request) while the upstream cannot be
reached, and never a credential, wherever a client put it."""

from __future__ import annotations

import asyncio
import base64
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway_procs import START_SECONDS, Served, echo_upstream, serve_sqlite, stop_serve
from harness import eventually, free_port

pytestmark = pytest.mark.slow

QUOTE = "/policy/acme-prod/quotes/q1"
UPSTREAM_LOGGER = "permgate.upstream"


@dataclass
class HeldUpstream:
    """An upstream whose /slow requests wait until released; counts arrivals."""

    url: str = ""
    arrived: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def slow(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.release.wait()
        return web.json_response({"slow": True})


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """The harness's echo upstream; its URL."""
    async with echo_upstream() as url:
        yield url


@pytest.fixture
async def held_upstream() -> AsyncIterator[HeldUpstream]:
    held = HeldUpstream()
    app = web.Application()
    app.router.add_get("/slow/{tenant}", held.slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    held.url = f"http://127.0.0.1:{port}"
    yield held
    held.release.set()
    await runner.cleanup()


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status


def access_lines(served: Served) -> list[dict[str, Any]]:
    return [r for r in served.log_records() if r["logger"] == "permgate.access"]


async def test_log_lines_are_json_off_a_terminal_and_the_access_line_has_the_request_id(
    tmp_path: Path, upstream: str
) -> None:
    """stderr is a file, so every line is one JSON object with ts, level, logger and
    message; the request's access line carries the client's X-Request-Id."""
    async with serve_sqlite(tmp_path, upstream) as served, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {served.tokens['bob']}", "X-Request-Id": "trace-42"}
        assert await get(http, served.url + QUOTE, headers) == 200
        await stop_serve(served.process)
    records = served.log_records()  # every line parses as JSON
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert [
        (r["message"], r["request_id"], r["status"], r["decision"], r["endpoint"])
        for r in access_lines(served)
    ] == [(f"GET {QUOTE} -> 200", "trace-42", 200, "allow", "quotes.get")]


async def test_text_format_on_demand_puts_the_request_id_on_the_access_line(
    tmp_path: Path, upstream: str
) -> None:
    """`log_format: text`: plain lines, the access line naming the request id."""
    async with (
        serve_sqlite(tmp_path, upstream, extra="log_format: text") as served,
        aiohttp.ClientSession() as http,
    ):
        headers = {"X-Request-Id": "trace-43"}
        assert await get(http, served.url + QUOTE, headers) == 401
        await stop_serve(served.process)
    lines = served.log_lines()
    assert lines and not any(line.startswith("{") for line in lines)
    access = [line for line in lines if " INFO permgate.access: " in line]
    assert len(access) == 1
    assert f"GET {QUOTE} -> 401 request_id=trace-43 status=401" in access[0]
    assert "reason=missing_credentials" in access[0]


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two workers"])
async def test_the_shutdown_line_counts_the_requests_drained(
    tmp_path: Path, held_upstream: HeldUpstream, workers: int
) -> None:
    """Three requests in flight at SIGTERM finish, and the shutdown line of each
    process says how many it drained: three in all, none cut off."""
    async with serve_sqlite(tmp_path, held_upstream.url, workers=workers) as served:
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            url = served.url + "/slow/acme-prod"
            in_flight = [asyncio.create_task(get(http, url, headers)) for _ in range(3)]
            await eventually(lambda: held_upstream.arrived == 3, "three requests in flight")
            served.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            held_upstream.release.set()
            assert await asyncio.gather(*in_flight) == [200, 200, 200]
        assert await asyncio.wait_for(served.process.wait(), START_SECONDS) == 0
    records = served.log_records()
    stopped = [r for r in records if r["message"].startswith("permgate stopped")]
    assert len({r["pid"] for r in stopped}) == workers == len(stopped)
    assert sum(r["drained"] for r in stopped) == 3
    assert {(r["cause"], r["cut_off"]) for r in stopped} == {("SIGTERM", 0)}


async def test_an_unreachable_upstream_is_one_warning_not_one_per_request(
    tmp_path: Path,
) -> None:
    """Nothing listens at the upstream: the start probe warns once, and 30 requests
    answered 502 add no further warning (they are counted for the next one)."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve_sqlite(tmp_path, dead) as served, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        statuses = [await get(http, served.url + QUOTE, headers) for _ in range(30)]
        await stop_serve(served.process)
    assert statuses == [502] * 30
    warnings = [r for r in served.log_records() if r["level"] == "warning"]
    assert [(r["logger"], r["upstream"]) for r in warnings] == [(UPSTREAM_LOGGER, dead)]
    assert "is unreachable" in warnings[0]["message"]
    assert len(access_lines(served)) == 30


async def test_the_first_answer_after_the_warning_says_the_upstream_answers_again(
    tmp_path: Path,
) -> None:
    """An upstream that starts after the gateway: one warning, then one line when it
    first answers."""
    port = free_port()
    async with (
        serve_sqlite(tmp_path, f"http://127.0.0.1:{port}") as served,
        aiohttp.ClientSession() as http,
    ):
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        assert await get(http, served.url + QUOTE, headers) == 502
        runner = web.AppRunner(web.Application(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            assert await get(http, served.url + QUOTE, headers) == 404  # the upstream's answer
        finally:
            await runner.cleanup()
        await stop_serve(served.process)
    said = [
        (r["level"], r["message"]) for r in served.log_records() if r["logger"] == UPSTREAM_LOGGER
    ]
    assert [level for level, _ in said] == ["warning", "info"]
    assert said[1][1] == f"upstream http://127.0.0.1:{port} answers again"


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_log_line_carries_a_credential(
    tmp_path: Path, upstream: str, log_format: str
) -> None:
    """Secrets in the Authorization header (bearer and basic), in the query string and
    in the path, valid or not: none of them reaches the log in either format."""
    forged = "pgt_0123456789abcdef_" + "S" * 43
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXNlY3JldA"
    basic = base64.b64encode(b"bob:hunter2-password").decode()
    async with (
        serve_sqlite(tmp_path, upstream, extra=f"log_format: {log_format}") as served,
        aiohttp.ClientSession() as http,
    ):
        real = served.tokens["bob"]
        requests = [
            (QUOTE, {"Authorization": f"Bearer {real}"}),
            (QUOTE, {"Authorization": f"Bearer {forged}"}),
            (QUOTE, {"Authorization": f"Bearer {jwt}"}),
            (QUOTE, {"Authorization": f"Basic {basic}"}),
            (f"{QUOTE}?access_token={real}&password=hunter2", {}),
            (f"/policy/acme-prod/quotes/{real}", {"Authorization": f"Bearer {real}"}),
            (f"/policy/acme-prod/quotes/{jwt}", {}),
        ]
        for path, headers in requests:
            await get(http, served.url + path, headers)
        await stop_serve(served.process)
    text = served.log.read_text()
    assert len([line for line in text.splitlines() if "permgate.access" in line]) == len(requests)
    for secret in (real[-43:], forged[-43:], jwt, basic, "hunter2"):
        assert secret not in text


async def test_an_unreadable_request_has_an_access_line_with_its_request_id(
    tmp_path: Path, upstream: str
) -> None:
    """Bytes the HTTP parser refuses still get one access line (and no byte of them)."""
    async with serve_sqlite(tmp_path, upstream) as served:
        host, port = served.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nno colon here secret-bytes\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), START_SECONDS)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400")
        await stop_serve(served.process)
    [line] = access_lines(served)
    assert (line["message"], line["status"]) == ("(unreadable request) -> 400", 400)
    assert line["request_id"] and "secret-bytes" not in served.log.read_text()
