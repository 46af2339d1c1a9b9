"""The shared store for fleets: PostgreSQL through an asyncpg pool.

Every write transaction first takes one transaction-level advisory lock, so writes
are serialised across every sidecar and ``permgate`` command sharing the database:
the change log's versions are then gap-free and in commit order, and a check made
inside the transaction (is this role assigned?) still holds at commit. The same
transaction calls ``pg_notify``; a watcher holds a dedicated LISTEN connection,
reads the log since its last version on each notification (and at least once a
second as a fallback), and after losing that connection reconnects with backoff
and calls ``on_reset`` because notifications may have been missed. While it cannot
listen it keeps reading the log through the pool once a second, and it tries to listen
again as soon as a read through the pool succeeds (the store is back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg

from permgate.errors import Conflict, PermgateError, StoreUnavailable
from permgate.store.backend import SqlStore, log
from permgate.store.migrations import LATEST, migrate
from permgate.store.sql import NOTIFY_CHANNEL, Transaction

# Arbitrary, fixed keys for pg_advisory_xact_lock: one for writes, one for migrations.
WRITE_LOCK: Final = 0x7065726D67617465  # "permgate"
MIGRATE_LOCK: Final = WRITE_LOCK + 1
POLL_SECONDS: Final = 1.0
CONNECT_TIMEOUT: Final = 5.0
MAX_BACKOFF: Final = 5.0
# Names the LISTEN connection in pg_stat_activity, so an operator (or a test) can find it.
LISTEN_APPLICATION_NAME: Final = "permgate-listen"

# What "the server cannot be reached or went away" looks like from asyncpg.
_CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)


def describe(dsn: str) -> str:
    """``host:port/database`` of a DSN, for messages: never the password."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    database = parts.path.lstrip("/") or (parts.username or "")
    return f"{host}:{port}/{database}" if database else f"{host}:{port}"


class _Conn:
    """The :class:`permgate.store.sql.Connection` calls over an asyncpg connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: object) -> list[Sequence[Any]]:
        return list(await self._conn.fetch(sql, *args))

    async def execute(self, sql: str, *args: object) -> None:
        await self._conn.execute(sql, *args)


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database; see :class:`permgate.store.base.Store`."""

    dialect = "postgres"

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.where = describe(dsn)
        self._pool: asyncpg.Pool | None = None
        # Set whenever the pool reaches the server: a watcher waiting to listen again
        # retries at once instead of at the end of its backoff.
        self._answered = asyncio.Event()

    @classmethod
    async def open(
        cls, dsn: str, *, schema_target: int = LATEST, max_connections: int = 5
    ) -> PostgresStore:
        """Connect a pool and migrate the schema (once, even if many start together)."""
        store = cls(dsn)
        try:
            store._pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_connections, timeout=CONNECT_TIMEOUT
            )
            async with store._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                await migrate(_Conn(conn), "postgres", schema_target)
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            await store._close_connections()
            raise store._unavailable(exc) from exc
        except BaseException:
            await store._close_connections()
            raise
        return store

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        text = str(exc) or type(exc).__name__
        return StoreUnavailable(f"cannot reach PostgreSQL at {self.where}: {text}")

    def _translate(self, exc: BaseException) -> PermgateError:
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            return Conflict(f"the change conflicts with the store's current state: {exc}")
        return self._unavailable(exc)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None or self._closed:
            raise StoreUnavailable(f"the PostgreSQL store at {self.where} is closed")
        return self._pool

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Transaction]:
        pool = self._require_pool()
        try:
            async with (
                pool.acquire(timeout=CONNECT_TIMEOUT) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                self._answered.set()
                yield Transaction(_Conn(conn), writable=False)
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise self._translate(exc) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        pool = self._require_pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                tx = Transaction(_Conn(conn), writable=True)
                yield tx
                version = await tx.flush_changes(time.time())
                if version is not None:
                    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(version))
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise self._translate(exc) from exc

    @asynccontextmanager
    async def _touch(self) -> AsyncIterator[Transaction]:
        # last_used_at is bookkeeping, not a model change: no need to queue behind
        # the model's write lock.
        pool = self._require_pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                yield Transaction(_Conn(conn), writable=True)
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise self._translate(exc) from exc

    async def _watch_loop(self) -> None:
        wake = asyncio.Event()
        backoff = 0.1
        connected_before = False
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()

            def on_lost(_conn: object, lost: asyncio.Event = lost) -> None:
                lost.set()
                wake.set()

            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=CONNECT_TIMEOUT,
                    server_settings={"application_name": LISTEN_APPLICATION_NAME},
                )
                conn.add_termination_listener(on_lost)
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
                if connected_before:
                    # Notifications sent while we were away are gone: start over.
                    await self._resync()
                else:
                    await self._deliver()  # anything committed while we connected
            except (*_CONNECTION_ERRORS, asyncpg.PostgresError, StoreUnavailable) as exc:
                log.warning("store watch: cannot listen on %s: %s", self.where, exc)
                if conn is not None:
                    conn.terminate()
                await self._until_retry(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except BaseException:
                # Cancelled (the store is closing) between connect and listening: the
                # connection must not be left for the garbage collector to find open.
                if conn is not None:
                    conn.terminate()
                raise
            connected_before = True
            backoff = 0.1
            try:
                while not lost.is_set() and not conn.is_closed():
                    with suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), POLL_SECONDS)
                    wake.clear()
                    await self._deliver_quietly()
                log.warning("store watch: lost the LISTEN connection to %s", self.where)
            finally:
                conn.terminate()

    async def _until_retry(self, backoff: float) -> None:
        """Wait up to ``backoff`` before listening again. Meanwhile deliver from the log
        through the pool every :data:`POLL_SECONDS`, so changes do not wait for the
        LISTEN connection (e.g. when only new connections are refused); and while the
        pool cannot reach the store either, end the wait as soon as any read through the
        pool succeeds: the store is back, so listen (and reset) now, not at the end of a
        backoff grown during the outage."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + backoff
        down = False
        while True:
            self._answered.clear()
            reachable = await self._deliver_quietly()
            if reachable and down:
                return
            down = not reachable
            left = deadline - loop.time()
            if left <= 0:
                return
            if reachable:
                await asyncio.sleep(min(left, POLL_SECONDS))
                continue
            with suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), min(left, POLL_SECONDS))
            if self._answered.is_set():
                return

    async def _close_connections(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), 5)
        except (TimeoutError, *_CONNECTION_ERRORS):
            pool.terminate()
