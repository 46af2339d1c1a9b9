"""Observability of real `permgate serve` processes: one scrape sums every
worker, SIGTERM under load writes an audit event for every answered request, SIGHUP
reloads the endpoint map in every worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway_procs import START_SECONDS, WAIT_SECONDS, eventually, serve_sqlite
from harness import TEST_MAP, Upstream, free_port

pytestmark = pytest.mark.slow

LIST_ENTRY = """  - {id: quotes.list, method: GET, path: "/policy/{tenantLocator}/quotes",
     permissions: [quotes.read]}
"""


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """The harness's echo upstream on a free port; /slow answers after 0.2 s."""
    echo = Upstream(slow_seconds=0.2)
    runner = web.AppRunner(echo.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def scrape(admin_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async with aiohttp.ClientSession() as http, http.get(admin_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "decision"]


async def test_two_workers_one_scrape_equals_the_sum(tmp_path: Path, upstream: str) -> None:
    """With --workers 2, each worker audits to its own file, both serve requests, and
    one scrape of /metrics counts every request of both; the map info is one series."""
    async with serve_sqlite(tmp_path, upstream, workers=2) as served:
        files = [tmp_path / "audit-w0.log", tmp_path / "audit-w1.log"]
        assert served.audit_files() == files
        sent = 0
        connector = aiohttp.TCPConnector(force_close=True)  # new connection: any worker
        async with aiohttp.ClientSession(connector=connector) as http:
            headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
            for _ in range(50):  # batches until both workers served some (bounded)
                for index in range(20):
                    path = "/policy/acme-prod/quotes/q1" if index % 2 else "/policy/x/quotes/q1"
                    async with http.get(served.url + path, headers=headers) as response:
                        await response.read()
                    sent += 1
                await eventually(
                    lambda n=sent: len(decisions(served.events())) == n, "every decision event"
                )
                if all(decisions(served.events(file)) for file in files):
                    break
        per_worker = [len(decisions(served.events(file))) for file in files]
        assert all(per_worker) and sum(per_worker) == sent
        samples = await scrape(served.admin_url)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), START_SECONDS) == 0
    totals = samples["permgate_decisions_total"]
    assert sum(totals.values()) == sent
    assert {dict(k)["reason"]: v for k, v in totals.items() if v} == {
        "allowed": sent / 2,
        "tenant_out_of_scope": sent / 2,
    }
    assert sum(samples["permgate_request_seconds_count"].values()) == sent
    info = samples["permgate_endpoint_map_info"]
    sha = hashlib.sha256(TEST_MAP.encode()).hexdigest()
    assert info == {(("sha256", sha), ("version", "1")): 1.0}
    reloads = samples["permgate_endpoint_map_reloads_total"]
    assert reloads[(("result", "ok"),)] == 2  # each worker's initial load


async def test_sigterm_under_load_writes_an_event_for_every_answer(
    tmp_path: Path, upstream: str
) -> None:
    """Concurrent clients for ~1.5 s, then SIGTERM: every answered request has exactly
    one decision event in the file, and no event was ever dropped."""
    answered: list[str] = []
    failed = 0
    stop = asyncio.Event()
    async with serve_sqlite(tmp_path, upstream) as served:
        secret = served.tokens["bob"]
        cases = [
            ("GET", "/policy/acme-prod/quotes/q1", secret),  # allow
            ("POST", "/policy/acme-prod/quotes/q1/issue", secret),  # deny
            ("GET", "/policy/acme-prod/quotes/q1", None),  # 401
            ("GET", "/slow/acme-prod", secret),  # in flight for 0.2 s
        ]

        async def client(number: int) -> None:
            nonlocal failed
            async with aiohttp.ClientSession() as http:
                index = 0
                while not stop.is_set():
                    method, path, credential = cases[(number + index) % len(cases)]
                    request_id = f"c{number}-{index}"
                    index += 1
                    headers = {"X-Request-Id": request_id}
                    if credential is not None:
                        headers["Authorization"] = f"Bearer {credential}"
                    try:
                        async with http.request(method, served.url + path, headers=headers) as r:
                            body = await r.read()
                            assert b"audit_overloaded" not in body
                            answered.append(request_id)
                    except aiohttp.ClientError:
                        failed += 1
                        await asyncio.sleep(0.01)

        clients = [asyncio.create_task(client(n)) for n in range(8)]
        await asyncio.sleep(1.5)
        samples = await scrape(served.admin_url)
        served.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(served.process.wait(), START_SECONDS)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), WAIT_SECONDS)
        events = decisions(served.events())
    assert code == 0
    assert samples["permgate_audit_events_dropped_total"] == {(): 0}
    assert len(answered) > 50
    written = [e["request_id"] for e in events]
    assert len(written) == len(set(written))  # exactly one event per request
    assert sorted(written) == sorted(answered)


async def test_sighup_reloads_the_map_in_every_worker(tmp_path: Path, upstream: str) -> None:
    """With polling effectively off, an edited map applies only on SIGHUP, which the
    parent forwards to each worker: both audit a map.reload and route the new path."""
    async with serve_sqlite(
        tmp_path, upstream, workers=2, extra="map_poll_seconds: 3600"
    ) as served:
        path = "/policy/acme-prod/quotes"
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def statuses() -> set[int]:
                seen = set()
                for _ in range(20):
                    async with http.get(served.url + path, headers=headers) as response:
                        await response.read()
                        seen.add(response.status)
                return seen

            assert await statuses() == {403}
            new_map = TEST_MAP + LIST_ENTRY
            (tmp_path / "endpoint_map.yaml").write_text(new_map, encoding="utf-8")
            await asyncio.sleep(0.5)
            assert await statuses() == {403}  # not polled: nothing changes by itself
            served.process.send_signal(signal.SIGHUP)

            def reloaded(file: Path) -> bool:
                return any(
                    e["event"] == "map.reload" and e["reason"] == "SIGHUP" and e["result"] == "ok"
                    for e in served.events(file)
                )

            for file in (tmp_path / "audit-w0.log", tmp_path / "audit-w1.log"):
                await eventually(lambda file=file: reloaded(file), f"a SIGHUP reload in {file}")
            assert await statuses() == {200}
        samples = await scrape(served.admin_url)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), START_SECONDS) == 0
    sha = hashlib.sha256(new_map.encode()).hexdigest()
    assert samples["permgate_endpoint_map_info"] == {(("sha256", sha), ("version", "1")): 1.0}
    reloads = samples["permgate_endpoint_map_reloads_total"]
    assert reloads[(("result", "ok"),)] == 4  # two initial loads, two SIGHUP reloads
    events = [e for e in served.events() if e["event"] == "map.reload" and e["reason"] == "SIGHUP"]
    assert [e["added"] for e in events] == [["quotes.list"], ["quotes.list"]]
