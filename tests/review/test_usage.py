"""Permission usage recorded by a real gateway: what counts, how it is batched, when it
reaches the store, and how a fleet's gateways add up in PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

import permgate.runtime.app
from harness import Gateway, eventually, start_gateway
from permgate.core.model import Principal
from permgate.core.token_secrets import token_id_of
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import Actor, ModelService
from permgate.maps.loader import parse_map
from permgate.observability.outcome import RequestOutcome
from permgate.observability.usage import UsageRecorder
from permgate.store import Store, open_store
from permgate.store.sql import UsageRow
from tcpproxy import TcpProxy


async def request(
    http: aiohttp.ClientSession, gw: Gateway, method: str, path: str, credential: str
) -> int:
    """Send one request through the gateway with a bearer credential; its status."""
    headers = {"Authorization": f"Bearer {credential}"}
    async with http.request(method, gw.url + path, headers=headers) as response:
        await response.read()
        return response.status


def token_id(gw: Gateway, name: str) -> str:
    found = token_id_of(gw.runtime.settings.auth.token_prefix, gw.tokens[name])
    assert found is not None
    return found


def key(row: UsageRow) -> tuple[str, str | None, str | None, str, int]:
    return (row.principal, row.token_id, row.tenant, row.permission, row.uses)


async def test_n_requests_become_one_row_counting_n(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Five allowed requests with one token on one endpoint and tenant: one row per
    required permission, counting 5, first use before last use."""
    started = time.time()
    for _ in range(5):
        assert (
            await request(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["alice"]) == 200
        )
    await gw.runtime.flush_usage()
    rows = await gw.runtime.store.list_usage(principal="alice", since=0)
    assert [key(r) for r in rows] == [
        ("alice", token_id(gw, "alice"), "acme-prod", "quotes.read", 5)
    ]
    assert started - 1 <= rows[0].first_used <= rows[0].last_used <= time.time()


async def test_every_required_permission_is_a_use(gw: Gateway, http: aiohttp.ClientSession) -> None:
    """An endpoint needing two permissions records both (root holds both through *.*)."""
    path = "/policy/acme-prod/quotes/q1/issue"
    assert await request(http, gw, "POST", path, gw.tokens["root"]) == 200
    await gw.runtime.flush_usage()
    rows = await gw.runtime.store.list_usage(principal="root", since=0)
    assert sorted(r.permission for r in rows) == ["policies.write", "quotes.read"]


async def test_any_of_records_only_the_members_the_grants_cover(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """any_of [quotes.write, quotes.price]: erin holds only quotes.price, so only that
    is her use, not quotes.write."""
    path = "/policy/acme-test/quotes/q1/price"
    assert await request(http, gw, "POST", path, gw.jwt("erin")) == 200
    await gw.runtime.flush_usage()
    rows = await gw.runtime.store.list_usage(principal="erin", since=0)
    assert [key(r) for r in rows] == [("erin", None, "acme-test", "quotes.price", 1)]


async def test_denials_shadow_passes_and_public_endpoints_are_not_usage(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A 403, a request let through only by shadow mode, an endpoint needing no
    permission and a public one: nothing is recorded."""
    bob = gw.tokens["bob"]
    assert await request(http, gw, "POST", "/policy/acme-prod/quotes", bob) == 403
    assert await request(http, gw, "POST", "/policy/acme-shadow/quotes", gw.jwt("bob")) == 200
    assert await request(http, gw, "GET", "/policy/acme-prod/ping", bob) == 200
    assert await request(http, gw, "GET", "/health", bob) == 200
    await gw.runtime.flush_usage()
    assert await gw.runtime.store.list_usage(principal="bob", since=0) == []


async def test_usage_reaches_the_store_without_an_explicit_flush(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic flush writes usage while the gateway runs (here every 0.1 s)."""
    monkeypatch.setattr(permgate.runtime.app, "USAGE_FLUSH_SECONDS", 0.1)
    async with start_gateway(tmp_path) as gw:
        assert await request(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.jwt("alice")) == 200

        async def recorded() -> list[UsageRow]:
            return await gw.runtime.store.list_usage(principal="alice", since=0)

        rows = await eventually(recorded, "usage written by the periodic flush")
        assert [key(r) for r in rows] == [("alice", None, "acme-prod", "quotes.read", 1)]


async def test_shutdown_flushes_what_the_timer_has_not(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no periodic flush due before it stops, the gateway writes its usage on
    shutdown."""
    monkeypatch.setattr(permgate.runtime.app, "USAGE_FLUSH_SECONDS", 3600.0)
    async with start_gateway(tmp_path) as gw:
        for _ in range(3):
            assert (
                await request(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"])
                == 200
            )
        assert await gw.runtime.store.list_usage(principal="bob", since=0) == []
        bob_token = token_id(gw, "bob")
    store = await open_store(f"sqlite://{tmp_path}/permgate.db")
    try:
        rows = await store.list_usage(principal="bob", since=0)
    finally:
        await store.close()
    assert [key(r) for r in rows] == [("bob", bob_token, "acme-prod", "quotes.read", 3)]


MAP = """
version: 1
defaults:
  tenant: {path_param: tenant}
endpoints:
  - {id: quotes.get, method: GET, path: "/q/{tenant}", permissions: [quotes.read]}
"""


def outcome(principal: Principal, tenant: str, started: float) -> RequestOutcome:
    """An allowed request's outcome as the pipeline fills it."""
    return RequestOutcome(
        request_id="r",
        decision_id="d",
        method="GET",
        path=f"/q/{tenant}",
        client_ip=None,
        started=started,
        endpoint="quotes.get",
        decision="allow",
        reason="allowed",
        principal=principal,
        tenant=tenant,
        required=("quotes.read",),
        status=200,
    )


async def recorder_on(dsn: str) -> tuple[Store, UsageRecorder]:
    store = await open_store(dsn)
    endpoint_map = parse_map(MAP)
    return store, UsageRecorder(ModelCache(store), lambda: endpoint_map)


async def test_postgresql_adds_up_two_gateways(pg_dsn: str) -> None:
    """Two recorders (two gateways) flushing into one PostgreSQL: counts add, the first
    use is the earliest of both and the last use the latest, also across flushes."""
    first_store, first = await recorder_on(pg_dsn)
    second_store, second = await recorder_on(pg_dsn)
    try:
        service = ModelService(first_store)
        await service.ensure_account(Actor.cli(), "acme")
        alice = Principal("alice", "acme", "user", (), ("any",))
        for started in (1000.0, 1005.0):
            first.record(outcome(alice, "acme-prod", started))
        for started in (990.0, 1001.0, 1002.0):
            second.record(outcome(alice, "acme-prod", started))
        assert await first.flush(first_store) == 1
        assert await second.flush(second_store) == 1
        second.record(outcome(alice, "acme-prod", 2000.0))
        await second.flush(second_store)
        rows = await first_store.list_usage(principal="alice", since=0)
    finally:
        await first_store.close()
        await second_store.close()
    assert rows == [UsageRow("alice", None, "acme-prod", "quotes.read", "acme", 990.0, 2000.0, 6)]


async def test_memory_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    """Past its bound a recorder keeps counting known keys but drops new ones, and
    says how many it dropped; the next batch starts fresh."""
    store = await open_store(f"sqlite://{tmp_path}/usage.db")
    try:
        endpoint_map = parse_map(MAP)
        recorder = UsageRecorder(ModelCache(store), lambda: endpoint_map, max_keys=2)
        alice = Principal("alice", "acme", "user", (), ("any",))
        for tenant in ("t1", "t2", "t3", "t1"):
            recorder.record(outcome(alice, tenant, 1000.0))
        assert (len(recorder), recorder.dropped) == (2, 1)
        assert await recorder.flush(store) == 2
        assert (len(recorder), recorder.dropped) == (0, 0)
        rows = await store.list_usage(principal="alice", since=0)
    finally:
        await store.close()
    assert [(r.tenant, r.uses) for r in rows] == [("t1", 2), ("t2", 1)]


async def test_a_store_outage_keeps_usage_for_the_next_flush(pg_dsn: str) -> None:
    """A flush while PostgreSQL cannot be reached writes nothing and loses nothing: the
    next flush after it is back writes the held uses together with the new ones."""
    parts = urlsplit(pg_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    userinfo = parts.netloc.rpartition("@")[0]
    proxied = urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{proxy.port}"))
    store, recorder = await recorder_on(proxied)
    try:
        alice = Principal("alice", "acme", "user", (), ("any",))
        recorder.record(outcome(alice, "acme-prod", 1000.0))
        await proxy.cut()
        assert await recorder.flush(store) == 0
        assert len(recorder) == 1
        await proxy.restore()
        recorder.record(outcome(alice, "acme-prod", 1010.0))
        assert await eventually(lambda: recorder.flush(store), "a flush after the outage") == 1
        rows = await store.list_usage(principal="alice", since=0)
    finally:
        await proxy.restore()
        await store.close()
        await proxy.close()
    assert [(r.uses, r.first_used, r.last_used) for r in rows] == [(2, 1000.0, 1010.0)]
