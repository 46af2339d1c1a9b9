"""Changes reach every process that serves requests, whatever happens to the wiring.

* ``serve --workers 2``: a change made through the admin API binds every worker before
  the API answers: the very next requests, spread over both workers, all see it.
* Several sidecars on one PostgreSQL: when the server terminates every connection of
  the database (a failover, a pooler restart), each sidecar notices at once, logs the
  loss, listens again, catches up on the change log, and logs the recovery; a token
  revoked a moment later by another process is refused by all of them within ~2 s.
* A change whose notification never arrives is still enforced within ~2 s: the
  sidecars check the change log every second as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest

from gateway_procs import (
    GatewayProcess,
    Outcome,
    Served,
    echo_upstream,
    outcome,
    seed_store,
    serve_sqlite,
    start_gateway_process,
    write_gateway_config,
)
from permgate.core.token_secrets import token_id_of
from permgate.gateway import changeepoch
from pgtools import server_connection

pytestmark = [pytest.mark.slow]

READS = ("GET", "/policy/acme-prod/quotes/q1")
FLEET_BOUND = 2.0  # a revocation after a lost connection binds every sidecar this fast
POLL = 0.05


def _token_id(secret: str) -> str:
    found = token_id_of("pgt_", secret)
    assert found is not None
    return found


# -- the counter the workers share -------------------------------------------------------

BUMPER = """
import sys
from permgate.gateway.changeepoch import ChangeEpoch
epoch = ChangeEpoch(sys.argv[1])
for _ in range(int(sys.argv[2])):
    epoch.bump()
"""


async def test_concurrent_bumps_from_several_processes_are_all_counted(tmp_path: Path) -> None:
    """Three processes bumping the shared counter at once lose no bump, and a reader
    in another process sees every one of them."""
    path = changeepoch.create_file()
    try:
        reader = changeepoch.ChangeEpoch(path)
        assert reader.value == 0
        bumpers = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", BUMPER, path, "200000")
            for _ in range(3)
        ]
        codes = await asyncio.wait_for(asyncio.gather(*(b.wait() for b in bumpers)), 60)
        assert codes == [0, 0, 0]
        assert reader.value == 600_000
        reader.close()
    finally:
        changeepoch.remove_file(path)
    assert not Path(path).exists()


def test_outside_a_worker_there_is_no_shared_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A single `serve` (no parent naming a counter) follows no shared counter."""
    monkeypatch.delenv(changeepoch.ENV, raising=False)
    assert changeepoch.ChangeEpoch.from_environment() is None


# -- workers of one `serve` --------------------------------------------------------------


@dataclass(frozen=True)
class AdminChange:
    """A change made through the admin API and what every request answers after it."""

    method: str
    path: str
    body: object
    after: Outcome


WORKER_CHANGES = {
    "token-revoked": AdminChange("DELETE", "/tokens/{bob}", None, (401, "revoked_token")),
    "principal-disabled": AdminChange(
        "PATCH", "/principals/bob", {"disabled": True}, (401, "disabled_principal")
    ),
}


async def _ask(http: aiohttp.ClientSession, served: Served, secret: str, rid: str) -> Outcome:
    headers = {"Authorization": f"Bearer {secret}", "X-Request-Id": rid}
    async with http.get(served.url + READS[1], headers=headers) as response:
        body = await response.read()
        return response.status, None if response.status < 400 else orjson.loads(body)["reason"]


async def _worker_of(served: Served, rid: str) -> str:
    """The audit file (one per worker) that recorded request ``rid``."""
    deadline = time.monotonic() + 5.0
    while True:
        for path in served.audit_files():
            if any(event.get("request_id") == rid for event in served.events(path)):
                return path.name
        assert time.monotonic() < deadline, f"request {rid} was never audited"
        await asyncio.sleep(0.05)


async def _one_connection_per_worker(
    served: Served, secret: str, stack: contextlib.AsyncExitStack
) -> list[aiohttp.ClientSession]:
    """A kept-alive connection to each of the two workers, each having served ``secret``
    once (so both hold the token and the decision in memory)."""
    pinned: dict[str, aiohttp.ClientSession] = {}
    for n in range(40):
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        rid = f"pin-{n}"
        assert await _ask(session, served, secret, rid) == (200, None)
        worker = await _worker_of(served, rid)
        if worker in pinned:
            await session.close()
            continue
        pinned[worker] = await stack.enter_async_context(session)
        if len(pinned) == 2:
            return list(pinned.values())
    raise AssertionError("40 connections all reached the same worker")


@pytest.mark.parametrize("label", list(WORKER_CHANGES), ids=list(WORKER_CHANGES))
async def test_admin_change_binds_every_worker_before_the_answer(
    tmp_path: Path, label: str
) -> None:
    """After the admin API answers, the next 40 requests, 20 on a connection to each
    worker, are all refused: none is decided from memory the change made stale."""
    change = WORKER_CHANGES[label]
    async with (
        echo_upstream() as upstream,
        serve_sqlite(tmp_path, upstream, workers=2) as served,
        contextlib.AsyncExitStack() as stack,
    ):
        # Whatever happens, SIGTERM the parent, which stops its workers (a SIGKILL would
        # leave them running).
        stack.push_async_callback(_stop_gracefully, served.process)
        bob = served.tokens["bob"]
        workers = await _one_connection_per_worker(served, bob, stack)
        for n in range(4):  # decisions now come from each worker's cache
            assert await _ask(workers[n % 2], served, bob, f"warm-{n}") == (200, None)

        headers = {"Authorization": f"Bearer {served.tokens['root']}"}
        data = None if change.body is None else orjson.dumps(change.body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = served.admin_url + "/v1" + change.path.format(bob=_token_id(bob))
        async with (
            aiohttp.ClientSession() as admin,  # a third connection, to either worker
            admin.request(change.method, url, data=data, headers=headers) as answer,
        ):
            assert answer.status < 300, await answer.text()

        answers = [await _ask(workers[n % 2], served, bob, f"after-{n}") for n in range(40)]
        accepted = [n for n, answer in enumerate(answers) if answer != change.after]
        assert not accepted, f"{len(accepted)} of 40 requests not refused: {answers}"


async def _stop_gracefully(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


# -- sidecars on one PostgreSQL ----------------------------------------------------------


@dataclass
class Sidecars:
    dsn: str
    gateways: list[GatewayProcess]
    tokens: dict[str, str]
    http: aiohttp.ClientSession

    async def answers(self, secret: str) -> list[Outcome]:
        return list(
            await asyncio.gather(
                *(outcome(self.http, READS[0], g.url + READS[1], secret) for g in self.gateways)
            )
        )

    async def until_all(self, secret: str, wanted: Outcome, *, within: float) -> float:
        """Ask every sidecar until all answer ``wanted`` (bounded); the time it took."""
        started = time.monotonic()
        while (answers := await self.answers(secret)) != [wanted] * len(self.gateways):
            elapsed = time.monotonic() - started
            assert elapsed < within, f"after {elapsed:.2f}s the sidecars answer {answers}"
            await asyncio.sleep(POLL)
        return time.monotonic() - started


@pytest.fixture
async def sidecars(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Sidecars]:
    """Three `permgate serve` processes on one fresh, seeded PostgreSQL database."""
    tokens = await seed_store(pg_dsn)
    async with echo_upstream() as upstream, aiohttp.ClientSession() as http:
        gateways = [
            write_gateway_config(tmp_path, f"s{n}", store=pg_dsn, upstream=upstream)
            for n in range(3)
        ]
        try:
            await asyncio.gather(*(start_gateway_process(g, http) for g in gateways))
            yield Sidecars(pg_dsn, gateways, tokens, http)
        finally:
            await asyncio.gather(*(g.stop() for g in gateways))


async def _terminate_every_connection(dsn: str) -> int:
    """What a failover does: the server ends every other connection to the database."""
    conn = await server_connection()
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            urlsplit(dsn).path.lstrip("/"),
        )
    finally:
        await conn.close()
    return sum(1 for row in killed if row[0])


async def _revoke_elsewhere(dsn: str, token_id: str) -> None:
    """Revoke a token from this process (not a sidecar), through the service."""
    from permgate.manage.service import Actor, ModelService
    from permgate.store import open_store

    store = await open_store(dsn)
    try:
        await ModelService(store).revoke_token(Actor.cli(), token_id)
    finally:
        await store.close()


@pytest.mark.postgres
async def test_every_sidecar_recovers_from_lost_connections(sidecars: Sidecars) -> None:
    """All connections terminated, then a revocation: every sidecar enforces it within
    ~2 s, and each logged the loss and the recovery."""
    bob = sidecars.tokens["bob"]
    assert await sidecars.answers(bob) == [(200, None)] * 3
    killed = await _terminate_every_connection(sidecars.dsn)
    assert killed >= 6, f"only {killed} connections were terminated"  # pool + LISTEN each

    await _revoke_elsewhere(sidecars.dsn, _token_id(bob))
    took = await sidecars.until_all(bob, (401, "revoked_token"), within=FLEET_BOUND)
    print(f"\nevery connection terminated: revocation enforced everywhere in {took:.2f}s")
    await asyncio.sleep(0.2)
    assert await sidecars.answers(bob) == [(401, "revoked_token")] * 3  # and it stays so
    for gateway in sidecars.gateways:
        log = gateway.log_text()
        assert "lost the LISTEN connection" in log, f"{gateway.name} logged no loss"
        assert "again; caught up on" in log, f"{gateway.name} logged no recovery"
        assert "Traceback" not in log, f"{gateway.name} logged a traceback:\n{log}"


@pytest.mark.postgres
async def test_change_without_notification_is_enforced_by_the_periodic_check(
    sidecars: Sidecars,
) -> None:
    """A committed change whose notification never arrives binds every sidecar within
    ~2 s: the change log is checked once a second whatever the notifications say."""
    bob = sidecars.tokens["bob"]
    assert await sidecars.answers(bob) == [(200, None)] * 3
    direct = await asyncpg.connect(sidecars.dsn, timeout=5)
    try:
        # The revocation and its change-log row, committed without pg_notify.
        async with direct.transaction():
            await direct.execute(
                "UPDATE tokens SET revoked_at = extract(epoch FROM now()) WHERE id = $1",
                _token_id(bob),
            )
            await direct.execute(
                "INSERT INTO change_log (version, kind, account, change_key, at) "
                "SELECT coalesce(max(version), 0) + 1, 'token', 'acme', $1, 0 FROM change_log",
                _token_id(bob),
            )
    finally:
        await direct.close()
    took = await sidecars.until_all(bob, (401, "revoked_token"), within=FLEET_BOUND)
    print(f"\nno notification: revocation enforced everywhere in {took:.2f}s")
