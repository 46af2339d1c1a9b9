"""A fleet: two real `permgate serve` processes on one real PostgreSQL.

A change made through one gateway's admin API, or by a `permgate` command, is enforced
by the other gateway within one second. Each measurement polls the other gateway every
~20 ms while the change is made and reports two times (printed; see them with -s):
from the commit (the earliest moment it can have happened: the last poll of the change
log that did not show it yet) and from the change's completion as its caller sees it
(the HTTP answer, or the command's exit; negative when the other gateway already
enforced it before the command had exited). Both must be under one second.

Also: a LISTEN connection killed from the database side is re-established and every
cache is flushed on reconnect. The helpers here (a fresh database per test, a gateway
process) are shared with ``test_store_outage.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import jwt
import orjson
import pytest

from gateway_procs import (
    BOUND,
    POLL,
    GatewayProcess,
    Outcome,
    echo_upstream,
    outcome,
    run_permgate,
    seed_store,
    start_gateway_process,
    write_gateway_config,
)
from harness import AUDIENCE, ISSUER, rsa_key
from permgate.core.token_secrets import token_id_of
from pgtools import server_connection

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


# -- the fleet ---------------------------------------------------------------------------


@dataclass
class Fleet:
    """Gateways A and B on one database, the seed's secrets and an HTTP session."""

    dsn: str
    tmp_path: Path
    a: GatewayProcess
    b: GatewayProcess
    tokens: dict[str, str]
    jwt_key: Any
    http: aiohttp.ClientSession

    def token_id(self, name: str) -> str:
        found = token_id_of("pgt_", self.tokens[name])
        assert found is not None
        return found

    def jwt(self, subject: str) -> str:
        """A JWT for ``subject`` issued a second ago by the test identity provider."""
        now = int(time.time()) - 1
        claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        return jwt.encode(claims, self.jwt_key, algorithm="RS256")

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call A's admin API as the seed's admin (root); the parsed answer (must be 2xx)."""
        headers = {"Authorization": f"Bearer {self.tokens['root']}"}
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = f"{self.a.admin_url}/v1{path}"
        async with self.http.request(method, url, data=data, headers=headers) as response:
            raw = await response.read()
            assert response.status < 300, f"{method} {path}: {response.status} {raw!r}"
            return orjson.loads(raw) if raw else None

    async def cli(self, *args: str) -> str:
        """Run a `permgate` command against the fleet's store."""
        return await run_permgate(*args, "--store", self.dsn, cwd=self.tmp_path)

    async def on_b(self, method: str, path: str, credential: str) -> Outcome:
        return await outcome(self.http, method, f"{self.b.url}{path}", credential)


@pytest.fixture
async def fleet(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Two `permgate serve` processes on one fresh, seeded PostgreSQL database."""
    tokens = await seed_store(pg_dsn)
    key, public_pem = rsa_key()
    jwt_settings = {
        "auth": {
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "keys": [public_pem],
                "algorithms": ["RS256"],
            }
        }
    }
    async with echo_upstream() as upstream, aiohttp.ClientSession() as http:
        a, b = (
            write_gateway_config(tmp_path, n, store=pg_dsn, upstream=upstream, extra=jwt_settings)
            for n in ("a", "b")
        )
        try:
            await asyncio.gather(start_gateway_process(a, http), start_gateway_process(b, http))
            yield Fleet(pg_dsn, tmp_path, a, b, tokens, key, http)
        finally:
            await asyncio.gather(a.stop(), b.stop())


# -- measuring propagation ---------------------------------------------------------------


@dataclass(frozen=True)
class Propagation:
    since_commit: float
    since_completion: float


async def measure(
    fleet: Fleet,
    change: Callable[[], Awaitable[object]],
    probe: Callable[[], Awaitable[Outcome]],
    new: Outcome,
    *,
    timeout: float = 10.0,
) -> Propagation:
    """Make ``change`` while polling ``probe`` (on B) and the change log; the times from
    the commit and from the change's completion to B's first ``new`` answer."""
    log_reader = await asyncpg.connect(fleet.dsn, timeout=5)
    try:
        base = await log_reader.fetchval("SELECT coalesce(max(version), 0) FROM change_log")

        async def committed_at() -> float:
            before = time.monotonic()  # the last moment the log was seen without the change
            while True:
                asked = time.monotonic()
                version = await log_reader.fetchval("SELECT max(version) FROM change_log")
                if version is not None and version > base:
                    return before
                before = asked
                await asyncio.sleep(0.005)

        async def enforced_at() -> float:
            while True:
                asked = time.monotonic()
                if await probe() == new:
                    return time.monotonic()
                await asyncio.sleep(max(0.0, POLL - (time.monotonic() - asked)))

        async def completed_at() -> float:
            await change()
            return time.monotonic()

        # A TaskGroup: if one part fails or the bound passes, the pollers stop too.
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            commit = group.create_task(committed_at())
            enforced = group.create_task(enforced_at())
            done = group.create_task(completed_at())
    finally:
        await log_reader.close()
    return Propagation(enforced.result() - commit.result(), enforced.result() - done.result())


def report(label: str, measured: Propagation) -> None:
    print(
        f"\npropagation {label}: {measured.since_commit * 1000:.0f} ms after the commit, "
        f"{measured.since_completion * 1000:.0f} ms after the change completed"
    )


# -- the changes -------------------------------------------------------------------------

ALICE_CREATES = ("POST", "/policy/acme-prod/quotes")
BOB_READS = ("GET", "/policy/acme-prod/quotes/q1")
SALES_AGENT_READ_ONLY = """
accounts:
  - id: acme
    roles:
      - name: sales-agent
        display_name: Sales Agent
        permissions: [quotes.read]
"""
ALICE_WITHOUT_ROLES = """
accounts:
  - id: acme
    principals:
      - id: alice
        kind: user
        roles: []
        tenants: [acme-prod, acme-shadow]
"""


@dataclass(frozen=True)
class Change:
    """A change made one way, and the request on B that shows it."""

    make: Callable[[Fleet], Awaitable[object]]
    probe: Callable[[Fleet], Awaitable[Outcome]]
    new: Outcome


async def _apply(fleet: Fleet, policy: str) -> str:
    path = fleet.tmp_path / "policy.yaml"
    path.write_text(policy, encoding="utf-8")
    return await fleet.cli("apply", str(path))


CHANGES = {
    "role-change/admin-api": Change(
        lambda f: f.admin("PATCH", "/roles/sales-agent", {"permissions": ["quotes.read"]}),
        lambda f: f.on_b(*ALICE_CREATES, f.tokens["alice"]),
        (403, "missing_permission"),
    ),
    "role-change/permgate-apply": Change(
        lambda f: _apply(f, SALES_AGENT_READ_ONLY),
        lambda f: f.on_b(*ALICE_CREATES, f.tokens["alice"]),
        (403, "missing_permission"),
    ),
    "principal-disabled/admin-api": Change(
        lambda f: f.admin("PATCH", "/principals/bob", {"disabled": True}),
        lambda f: f.on_b(*BOB_READS, f.tokens["bob"]),
        (401, "disabled_principal"),
    ),
    "principal-role-removed/admin-api": Change(
        lambda f: f.admin("PUT", "/principals/alice/roles", []),
        lambda f: f.on_b(*ALICE_CREATES, f.jwt("alice")),
        (401, "session_revoked"),
    ),
    "principal-role-removed/permgate-apply": Change(
        lambda f: _apply(f, ALICE_WITHOUT_ROLES),
        lambda f: f.on_b(*ALICE_CREATES, f.jwt("alice")),
        (401, "session_revoked"),
    ),
    "token-revoked/admin-api": Change(
        lambda f: f.admin("DELETE", f"/tokens/{f.token_id('bob')}"),
        lambda f: f.on_b(*BOB_READS, f.tokens["bob"]),
        (401, "revoked_token"),
    ),
    "token-revoked/permgate-tokens-revoke": Change(
        lambda f: f.cli("tokens", "revoke", f.token_id("bob")),
        lambda f: f.on_b(*BOB_READS, f.tokens["bob"]),
        (401, "revoked_token"),
    ),
}


@pytest.mark.parametrize("label", list(CHANGES), ids=list(CHANGES))
async def test_change_reaches_the_other_gateway_within_one_second(fleet: Fleet, label: str) -> None:
    """A change made through A's admin API or a command is enforced by B within 1 s."""
    change = CHANGES[label]
    before = await change.probe(fleet)
    assert before[0] in (200, 201), f"B must allow the request before the change: {before}"
    assert await change.probe(fleet) == before  # now also a cached decision on B
    measured = await measure(
        fleet, lambda: change.make(fleet), lambda: change.probe(fleet), change.new
    )
    report(label, measured)
    assert measured.since_commit < BOUND
    assert measured.since_completion < BOUND
    await asyncio.sleep(0.1)
    assert await change.probe(fleet) == change.new  # and it stays that way


# -- the LISTEN connection ---------------------------------------------------------------


async def _terminate_listeners(dsn: str) -> int:
    """Kill every gateway's LISTEN connection to the database, from the server side."""
    database = urlsplit(dsn).path.lstrip("/")
    conn = await server_connection()
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name = 'permgate-listen'",
            database,
        )
    finally:
        await conn.close()
    return sum(1 for row in killed if row[0])


async def test_lost_listen_connection_is_reestablished_and_flushes_every_cache(
    fleet: Fleet,
) -> None:
    """Killing the LISTEN connections makes B drop every cached entry on reconnect."""
    bob = fleet.tokens["bob"]
    assert await fleet.on_b(*BOB_READS, bob) == (200, None)
    # A write that leaves no change-log row and sends no notification stands for a
    # notification missed while disconnected: only a full flush can reveal it.
    direct = await asyncpg.connect(fleet.dsn, timeout=5)
    try:
        await direct.execute("UPDATE principals SET disabled = true WHERE id = 'bob'")
    finally:
        await direct.close()
    deadline = time.monotonic() + 1.5  # longer than the watcher's 1 s fallback poll
    while time.monotonic() < deadline:
        assert await fleet.on_b(*BOB_READS, bob) == (200, None), "B must still serve memory"
        await asyncio.sleep(0.1)

    assert await _terminate_listeners(fleet.dsn) == 2  # one per gateway
    killed_at = time.monotonic()
    while (answer := await fleet.on_b(*BOB_READS, bob)) != (401, "disabled_principal"):
        assert answer == (200, None)
        assert time.monotonic() - killed_at < 5.0, "B never flushed its caches"
        await asyncio.sleep(POLL)
    flushed = time.monotonic() - killed_at
    print(f"\nLISTEN connection killed: caches flushed {flushed * 1000:.0f} ms later")
    assert "lost the LISTEN connection" in fleet.b.log_text()

    # The new LISTEN connection delivers changes again.
    alice = fleet.tokens["alice"]
    assert await fleet.on_b(*ALICE_CREATES, alice) == (200, None)
    measured = await measure(
        fleet,
        lambda: fleet.admin("DELETE", f"/tokens/{fleet.token_id('alice')}"),
        lambda: fleet.on_b(*ALICE_CREATES, alice),
        (401, "revoked_token"),
    )
    report("token-revoked/admin-api after a LISTEN reconnect", measured)
    assert measured.since_commit < BOUND
    assert measured.since_completion < BOUND
