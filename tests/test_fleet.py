"""A fleet: two real `permgate serve` processes on one real PostgreSQL (DESIGN §1.4, §8).

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
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
import yaml
from aiohttp import web

from harness import AUDIENCE, ISSUER, TEST_MAP, Upstream, free_port, rsa_key, seed
from permgate.service import ModelService
from permgate.store import open_store
from permgate.token_secrets import token_id_of

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG_DSN = os.environ.get("PERMGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 30.0
BOUND = 1.0  # DESIGN §1.4: "within one second"
POLL = 0.02  # how often the other gateway is asked while a change is made

# -- PostgreSQL --------------------------------------------------------------------------


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def server_connection(dsn: str = PG_DSN) -> asyncpg.Connection:
    """A connection to the test server; fails under CI=true, else skips, when it is down."""
    try:
        return await asyncpg.connect(dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL not reachable at {PG_DSN}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true requires it)")
        pytest.skip(
            f"{message}; start it (see DEVELOPERS.md) or set PERMGATE_TEST_PG_DSN to enable"
        )


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"pg_{secrets.token_hex(6)}"
    admin = await server_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(PG_DSN, name)
    admin = await server_connection()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def seed_store(dsn: str) -> dict[str, str]:
    """The harness cast, written through ModelService; token secrets by name."""
    store = await open_store(dsn)
    try:
        return await seed(ModelService(store))
    finally:
        await store.close()


# -- processes --------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The test's environment without PERMGATE_* settings (the config file rules)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}


@dataclass
class GatewayProcess:
    """One `permgate serve` process: its URLs, its config and its log."""

    name: str
    url: str
    admin_url: str
    config: Path
    log: Path
    process: asyncio.subprocess.Process | None = None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()


def write_gateway_config(
    tmp_path: Path, name: str, *, store: str, upstream: str, extra: dict[str, Any] | None = None
) -> GatewayProcess:
    """A config file (own ports and audit file, the shared map) for gateway ``name``."""
    map_path = tmp_path / "endpoint_map.yaml"
    if not map_path.exists():
        map_path.write_text(TEST_MAP, encoding="utf-8")
    port, admin_port = free_port(), free_port()
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "upstream": upstream,
        "endpoint_map": str(map_path),
        "store": store,
        "audit": {"sink": f"file:{tmp_path / f'audit-{name}.log'}"},
        **(extra or {}),
    }
    path = tmp_path / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return GatewayProcess(
        name=name,
        url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        config=path,
        log=tmp_path / f"gateway-{name}.stderr",
    )


async def start_gateway_process(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    """Start `permgate serve` and wait (bounded) until its /readyz answers 200."""
    with gateway.log.open("wb") as log:
        gateway.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "permgate",
            "serve",
            "--config",
            str(gateway.config),
            cwd=gateway.config.parent,
            env=clean_env(),
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if gateway.process.returncode is not None:
            raise AssertionError(f"gateway {gateway.name} exited:\n{gateway.log_text()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{gateway.admin_url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    await gateway.stop()
    raise AssertionError(f"gateway {gateway.name} not ready in time:\n{gateway.log_text()}")


async def run_permgate(*args: str, cwd: Path) -> str:
    """Run a `permgate` command to completion (bounded); its stdout; fails on non-zero."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "permgate",
        *args,
        cwd=cwd,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"permgate {' '.join(args)} failed:\n{err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def echo_upstream() -> AsyncIterator[str]:
    """The harness's echo upstream in the test's event loop; its URL."""
    runner = web.AppRunner(Upstream().app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Outcome = tuple[int, str | None]


async def outcome(http: aiohttp.ClientSession, method: str, url: str, credential: str) -> Outcome:
    """Status and refusal reason (None when forwarded) of one request."""
    headers = {"Authorization": f"Bearer {credential}"}
    async with http.request(method, url, headers=headers) as response:
        body = await response.read()
        if response.status < 400:
            return response.status, None
        return response.status, orjson.loads(body).get("reason")


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
