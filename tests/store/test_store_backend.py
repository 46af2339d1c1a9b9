"""The store backends: DSNs, migrations, reads, error translation, change watching."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from permgate.core.errors import ConfigError, StoreUnavailable
from permgate.manage.service import Actor, ModelService
from permgate.store import Change, Store, open_store
from permgate.store.migrations import LATEST
from pgtools import PG_DSN

CLI = Actor.cli()


@pytest.mark.parametrize(
    "dsn",
    ["mysql://x@y/z", "sqlite://", "sqlite://:memory:", "/var/lib/permgate.db"],
    ids=["mysql", "sqlite-no-path", "sqlite-memory", "bare-path"],
)
async def test_unsupported_dsn_is_a_config_error(dsn: str) -> None:
    """A DSN of no supported form is refused with the forms that are accepted."""
    with pytest.raises(ConfigError, match=r"expected sqlite:///ABSOLUTE/PATH\.db"):
        await open_store(dsn)


async def test_sqlite_unreachable_file_names_the_file(tmp_path: Path) -> None:
    """A SQLite file that cannot be opened is StoreUnavailable naming the file."""
    path = tmp_path / "missing-dir" / "x.db"
    with pytest.raises(StoreUnavailable, match=str(path)):
        await open_store(f"sqlite://{path}")


async def test_sqlite_relative_dsn_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite://name.db`` (two slashes) is a path relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite://rel.db")
    await store.close()
    assert (tmp_path / "rel.db").is_file()


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    """The embedded store runs in WAL mode so readers never block the writer."""
    store = await open_store(f"sqlite://{tmp_path / 'w.db'}")
    await store.close()
    with sqlite3.connect(tmp_path / "w.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.postgres
async def test_postgres_unreachable_names_host() -> None:
    """An unreachable PostgreSQL is StoreUnavailable naming host and port, no password."""
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/db") as info:
        await open_store("postgresql://u:sekret@127.0.0.1:1/db")
    assert "sekret" not in str(info.value)


async def test_older_schema_is_migrated_not_recreated(store_dsn: str) -> None:
    """A store created at schema v1 keeps its data when opened by current code."""
    old = await open_store(store_dsn, schema_target=1)
    await ModelService(old).ensure_account(CLI, "acme")
    await old.close()
    current = await open_store(store_dsn)
    try:
        assert await current.account_exists("acme")
        assert "admin" in await current.get_roles("acme")
        async with current.write() as tx:  # type: ignore[attr-defined]
            rows = await tx._conn.fetch("SELECT version FROM schema_version")
        assert rows[0][0] == LATEST
    finally:
        await current.close()


async def test_reopening_current_schema_is_a_no_op(store_dsn: str) -> None:
    """Opening an up-to-date store twice runs no migration and keeps its data."""
    first = await open_store(store_dsn)
    await ModelService(first).ensure_account(CLI, "acme")
    await first.close()
    second = await open_store(store_dsn)
    try:
        assert await second.list_accounts() == ["acme"]
    finally:
        await second.close()


async def test_new_account_has_builtin_roles(acme: ModelService, store: Store) -> None:
    """A new account gets admin, read-only, full-access and claims-only, all builtin."""
    roles = await store.get_roles("acme")
    assert sorted(roles) == ["admin", "claims-only", "full-access", "read-only"]
    assert all(role.builtin for role in roles.values())
    assert roles["full-access"].display_name == "Full Access"


async def test_principal_read_has_roles_and_scope(acme: ModelService, store: Store) -> None:
    """get_principal returns role assignments and the tenant scope in one snapshot."""
    await acme.set_principal_roles(
        CLI, "alice", [("full-access", None), ("claims-only", "acme-test")]
    )
    alice = await store.get_principal("alice")
    assert alice is not None
    assert [(a.role, a.tenant) for a in alice.roles] == [
        ("claims-only", "acme-test"),
        ("full-access", None),
    ]
    assert alice.tenants == ("acme-prod",)


async def test_token_read_has_hash_and_touch_records_use(acme: ModelService, store: Store) -> None:
    """get_token carries the secret hash; touch_tokens records last use without a change."""
    token, secret = await acme.create_token(CLI, "root", "ci", ["quotes.read"], ["any"])
    version = await store.version()
    await store.touch_tokens({token.id: 1_700_000_000.0})
    stored = await store.get_token(token.id)
    assert stored is not None and stored.secret_hash == token.secret_hash
    assert stored.last_used_at is not None
    assert stored.last_used_at.timestamp() == 1_700_000_000.0
    assert await store.version() == version
    assert secret not in repr(stored)


async def test_every_write_advances_version_once(acme: ModelService, store: Store) -> None:
    """One committed service call is one new version, with the changes it made."""
    before = await store.version()
    await acme.create_tenant(CLI, "acme", "acme-dev", type="TEST")
    assert await store.version() == before + 1
    changes = await store.changes_since(before)
    assert changes == [Change(before + 1, "tenant", "acme", "acme-dev")]


async def test_failed_write_leaves_no_trace(acme: ModelService, store: Store) -> None:
    """A refused change writes no row, no audit record and no version."""
    before = await store.version()
    audit = await store.list_audit("acme", limit=1)
    with pytest.raises(Exception, match="already taken"):
        await acme.create_tenant(CLI, "acme", "acme-prod")
    assert await store.version() == before
    assert await store.list_audit("acme", limit=1) == audit


async def _watch(store: Store) -> tuple[list[Change], list[str]]:
    got: list[Change] = []
    resets: list[str] = []
    await store.watch(got.extend, lambda: resets.append("reset"))
    return got, resets


async def _until(condition: object, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


async def test_change_by_another_store_reaches_watcher_within_a_second(
    store_dsn: str, acme: ModelService, store: Store
) -> None:
    """A change committed through a second store object is delivered within 1 s."""
    got, resets = await _watch(store)
    other = await open_store(store_dsn)
    try:
        started = asyncio.get_running_loop().time()
        await ModelService(other).create_tenant(CLI, "acme", "acme-new")
        assert await _until(lambda: got, 1.0)
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        await other.close()
    assert got[0].kind == "tenant" and got[0].key == "acme-new"
    assert resets == []


async def test_watcher_delivers_in_version_order(acme: ModelService, store: Store) -> None:
    """Several changes arrive in commit order with increasing versions."""
    got, _ = await _watch(store)
    for name in ("t1", "t2", "t3"):
        await acme.create_tenant(CLI, "acme", name)
    assert await _until(lambda: len(got) >= 3, 2.0)
    assert [c.key for c in got] == ["t1", "t2", "t3"]
    assert [c.version for c in got] == sorted({c.version for c in got})
    assert store.last_version == got[-1].version


async def test_deliver_now_hands_over_own_change_at_once(acme: ModelService, store: Store) -> None:
    """deliver_now() delivers a just-committed change before the poll or notification."""
    got, _ = await _watch(store)
    await acme.create_tenant(CLI, "acme", "acme-now")
    await store.deliver_now()
    assert [c.key for c in got] == ["acme-now"]


async def test_close_stops_the_watcher(store_dsn: str) -> None:
    """close() ends the background task; nothing is delivered afterwards."""
    store = await open_store(store_dsn)
    got, _ = await _watch(store)
    await store.close()
    writer = await open_store(store_dsn)
    try:
        await ModelService(writer).ensure_account(CLI, "late")
        await asyncio.sleep(0.5)
    finally:
        await writer.close()
    assert got == []


@pytest.mark.postgres
async def test_killed_listener_resets_and_keeps_delivering(pg_dsn: str) -> None:
    """Terminating the LISTEN connection leads to on_reset, then delivery goes on."""
    store = await open_store(pg_dsn)
    try:
        service = ModelService(store)
        await service.ensure_account(CLI, "acme")
        got, resets = await _watch(store)
        await asyncio.sleep(0.3)  # the listener is connected
        database = pg_dsn.rsplit("/", 1)[1]
        admin = await asyncpg.connect(PG_DSN)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name = 'permgate-listen'",
                database,
            )
        finally:
            await admin.close()
        assert killed == 1
        assert await _until(lambda: resets, 3.0)
        await service.create_tenant(CLI, "acme", "after-reset")
        assert await _until(lambda: any(c.key == "after-reset" for c in got), 2.0)
    finally:
        await store.close()
