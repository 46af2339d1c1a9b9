"""A store outage: a real `permgate serve` reaches PostgreSQL
through a TCP proxy that the test cuts (listener closed, open connections reset) and
restores.

While the store is unreachable: a credential the gateway has never seen gets 503
``store_unavailable``, /readyz is 503 with the store check false, and a credential
already in memory is served for at most ``cache.outage_grace_seconds``, then refused
the same way. When the proxy returns, service resumes by itself, changes made by
others are enforced again within a second, and nothing is restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from gateway_procs import (
    BOUND,
    POLL,
    GatewayProcess,
    Outcome,
    echo_upstream,
    outcome,
    seed_store,
    start_gateway_process,
    write_gateway_config,
)
from permgate.core.token_secrets import token_id_of
from permgate.manage.service import Actor, ModelService
from permgate.store import open_store
from tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

GRACE = 2.0  # cache.outage_grace_seconds of the gateway under test
UNAVAILABLE: Outcome = (503, "store_unavailable")
OK: Outcome = (200, None)
READS = "/policy/acme-prod/quotes/q1"


def through(proxy: TcpProxy, dsn: str) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Outage:
    """One gateway on PostgreSQL through a proxy that can be cut."""

    gateway: GatewayProcess
    proxy: TcpProxy
    direct_dsn: str
    tokens: dict[str, str]
    http: aiohttp.ClientSession

    async def ask(self, token: str) -> Outcome:
        return await outcome(self.http, "GET", f"{self.gateway.url}{READS}", self.tokens[token])

    async def readyz(self) -> tuple[int, Any]:
        async with self.http.get(f"{self.gateway.admin_url}/readyz") as response:
            return response.status, await response.json()

    async def until(self, token: str, wanted: Outcome, *, within: float) -> float:
        """Ask every POLL seconds until ``wanted`` (bounded); the time it took."""
        started = time.monotonic()
        while (answer := await self.ask(token)) != wanted:
            elapsed = time.monotonic() - started
            assert elapsed < within, f"{token}: still {answer} after {elapsed:.2f}s"
            await asyncio.sleep(POLL)
        return time.monotonic() - started


@pytest.fixture
async def outage(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Outage]:
    """A seeded database, a proxy in front of it and a gateway that uses the proxy."""
    tokens = await seed_store(pg_dsn)
    parts = urlsplit(pg_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        async with echo_upstream() as upstream, aiohttp.ClientSession() as http:
            gateway = write_gateway_config(
                tmp_path,
                "g",
                store=through(proxy, pg_dsn),
                upstream=upstream,
                extra={"cache": {"outage_grace_seconds": GRACE}},
            )
            try:
                await start_gateway_process(gateway, http)
                yield Outage(gateway, proxy, pg_dsn, tokens, http)
            finally:
                await proxy.restore()  # let the gateway close its connections cleanly
                await gateway.stop()
    finally:
        await proxy.close()


async def test_store_outage_fails_closed_within_the_grace_bound_and_recovers(
    outage: Outage,
) -> None:
    """Cut: unknown credentials 503 at once, known ones after the grace bound; restore:
    everything resumes without a restart."""
    assert await outage.ask("alice") == OK  # alice is now known to the gateway
    assert (await outage.readyz())[0] == 200

    await outage.proxy.cut()
    cut_at = time.monotonic()
    url = f"{outage.gateway.url}{READS}"
    headers = {"Authorization": f"Bearer {outage.tokens['bob']}"}
    async with outage.http.get(url, headers=headers) as response:  # never seen: fail closed
        assert response.status == 503
        assert response.content_type == "application/json"
        body = await response.json()
    assert (body["error"], body["reason"]) == ("unavailable", "store_unavailable")
    assert await outage.ask("alice") == OK  # known: served from memory
    status, ready = await outage.readyz()
    assert (status, ready["status"], ready["checks"]["store"]) == (503, "not_ready", False)
    assert await outage.ask("bob") == UNAVAILABLE

    await outage.until("alice", UNAVAILABLE, within=GRACE + 1.0)
    served_for = time.monotonic() - cut_at
    print(f"\nstore cut: a known credential was served {served_for:.2f} s (grace {GRACE} s)")
    # Memory is trusted for GRACE after the store was last reached (a keepalive pings
    # every GRACE/3), never longer.
    assert GRACE * 2 / 3 - 0.1 <= served_for <= GRACE + 0.5
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await outage.ask("alice") == UNAVAILABLE  # and stays refused

    await outage.proxy.restore()
    restored_at = time.monotonic()
    await outage.until("bob", OK, within=10.0)
    resumed = time.monotonic() - restored_at
    assert await outage.ask("alice") == OK
    deadline = time.monotonic() + 10.0
    while (await outage.readyz())[0] != 200:
        assert time.monotonic() < deadline, "/readyz never came back"
        await asyncio.sleep(POLL)
    print(f"store restored: new credentials served again after {resumed:.2f} s")
    assert outage.gateway.process is not None and outage.gateway.process.returncode is None


async def test_changes_made_by_others_are_enforced_within_one_second_after_an_outage(
    outage: Outage,
) -> None:
    """After the store returns, a change made elsewhere is enforced within 1 s."""
    assert await outage.ask("bob") == OK
    await outage.proxy.cut()
    await outage.until("bob", UNAVAILABLE, within=GRACE + 1.0)
    await asyncio.sleep(3.0)  # a longer outage: the watcher's reconnect backoff grows
    await outage.proxy.restore()
    await outage.until("bob", OK, within=10.0)

    store = await open_store(outage.direct_dsn)  # another process's write, in effect
    try:
        bob_token = token_id_of("pgt_", outage.tokens["bob"])
        assert bob_token is not None
        await ModelService(store).revoke_token(Actor.cli(), bob_token)
    finally:
        await store.close()
    took = await outage.until("bob", (401, "revoked_token"), within=10.0)
    print(f"\nafter the outage: a revocation was enforced {took * 1000:.0f} ms after its commit")
    assert took < BOUND
