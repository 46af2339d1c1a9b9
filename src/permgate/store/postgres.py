"""The shared store for fleets: PostgreSQL through an asyncpg pool.

Every write transaction first takes one transaction-level advisory lock, so writes
are serialised across every sidecar and ``permgate`` command sharing the database:
the change log's versions are then gap-free and in commit order, and a check made
inside the transaction (is this role assigned?) still holds at commit. The same
transaction calls ``pg_notify``.

A watcher holds a dedicated connection: it LISTENs on it, and change-log reads for
delivery and pings run on it too (never queued behind request-path lookups in the
pool). It reads the log since its last version on each notification and, as a
safety net against a notification that never arrives, at least once a second. When
that connection is lost (the server terminated it, a failover, a pooler restart) the
asyncpg termination listener wakes the watcher at once: it logs the loss, connects
and listens again with backoff, catches up on the log from where it stopped, resets
every cache, and logs the recovery. While it cannot listen it keeps reading the log
through the pool once a second, and it tries to listen again as soon as a read
through the pool succeeds (the store is back). A pool connection that failed at the
protocol level is discarded, not handed out again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg

from permgate.core.errors import StoreUnavailable
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

# A check of the LISTEN connection that takes longer than this means it is dead.
SIDE_READ_TIMEOUT: Final = 5.0

# What "the server cannot be reached or went away" looks like from asyncpg; an
# internal client error is what a connection killed mid-protocol can raise.
_CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.InternalClientError,
)
# Every error of asyncpg's that means PostgreSQL cannot be used right now.
_STORE_ERRORS: Final = (*_CONNECTION_ERRORS, asyncpg.PostgresError)


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
    _BACKEND_ERRORS = _STORE_ERRORS
    _CONFLICT_ERROR = asyncpg.IntegrityConstraintViolationError

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.where = describe(dsn)
        self._pool: asyncpg.Pool | None = None
        # Set whenever the pool reaches the server: a watcher waiting to listen again
        # retries at once instead of at the end of its backoff.
        self._answered = asyncio.Event()
        # The watcher's LISTEN connection while it is up; its queries are serialised.
        self._listen: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, dsn: str, *, schema_target: int = LATEST, max_connections: int = 5
    ) -> PostgresStore:
        """Connect a pool and migrate the schema (once, even if many start together)."""
        store = cls(dsn)
        async with store._opening():
            store._pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_connections, timeout=CONNECT_TIMEOUT
            )
            async with store._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                await migrate(_Conn(conn), "postgres", schema_target)
        return store

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        text = str(exc) or type(exc).__name__
        return StoreUnavailable(f"cannot reach PostgreSQL at {self.where}: {text}")

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None or self._closed:
            raise StoreUnavailable(f"the PostgreSQL store at {self.where} is closed")
        return self._pool

    @asynccontextmanager
    async def _pooled(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection from the pool for one use. A connection that fails mid-protocol
        is discarded (the pool opens a fresh one instead of handing it out again), and
        asyncpg's errors, from the pool or the body, leave as permgate's own."""
        pool = self._require_pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                try:
                    yield conn
                except _CONNECTION_ERRORS:
                    _discard(conn)
                    raise
        except _STORE_ERRORS as exc:
            raise self._translate(exc) from exc

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Transaction]:
        async with (
            self._pooled() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            self._answered.set()
            yield Transaction(_Conn(conn), writable=False)

    @asynccontextmanager
    async def _point_read(self) -> AsyncIterator[Transaction]:
        # One statement is one snapshot: no BEGIN/COMMIT round trips.
        async with self._pooled() as conn:
            self._answered.set()
            yield Transaction(_Conn(conn), writable=False)

    @asynccontextmanager
    async def _side_read(self) -> AsyncIterator[Transaction]:
        conn = self._listen
        if conn is None or conn.is_closed():
            async with self._read() as tx:
                yield tx
            return
        async with self._listen_lock:
            try:
                # One statement at a time (the log since a version, or its newest
                # version): consistent by itself, no BEGIN/COMMIT round trips.
                async with asyncio.timeout(SIDE_READ_TIMEOUT):
                    yield Transaction(_Conn(conn), writable=False)
            except _STORE_ERRORS as exc:
                if isinstance(exc, _CONNECTION_ERRORS):
                    conn.terminate()  # the watcher notices and listens again
                raise self._translate(exc) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        async with self._pooled() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            tx = Transaction(_Conn(conn), writable=True)
            yield tx
            version = await tx.flush_changes(time.time())
            if version is not None:
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(version))

    @asynccontextmanager
    async def _touch(self) -> AsyncIterator[Transaction]:
        # last_used_at is bookkeeping, not a model change: no need to queue behind
        # the model's write lock.
        async with self._pooled() as conn, conn.transaction():
            yield Transaction(_Conn(conn), writable=True)

    async def _watch_loop(self) -> None:
        backoff = 0.1
        connected_before = False
        while True:
            wake = asyncio.Event()
            try:
                conn = await self._listen_again(wake, recovering=connected_before)
            except (*_STORE_ERRORS, StoreUnavailable) as exc:
                log.warning("store watch: cannot listen on %s: %s", self.where, exc)
                await self._until_retry(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            connected_before = True
            backoff = 0.1
            try:
                while not conn.is_closed():
                    with suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), POLL_SECONDS)
                    wake.clear()
                    if conn.is_closed():
                        break
                    # On a notification, and once a second whatever happened: the
                    # safety net for a notification that never arrived.
                    await self._deliver_quietly()
                log.warning(
                    "store watch: lost the LISTEN connection to %s at change %d; listening again",
                    self.where,
                    self.last_version,
                )
            finally:
                self._listen = None
                conn.terminate()

    async def _listen_again(self, wake: asyncio.Event, *, recovering: bool) -> asyncpg.Connection:
        """Connect, LISTEN, and deliver what was committed meanwhile; after a loss, catch
        up from where delivery stopped and reset every cache (notifications were
        missed), and log the recovery."""
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(
                self.dsn,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": LISTEN_APPLICATION_NAME},
            )
            # Wakes the watcher the moment the server or the network drops the connection.
            conn.add_termination_listener(lambda _conn: wake.set())
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
            self._listen = conn
            if recovering:
                since, caught_up = await self._recover()
                log.warning(
                    "store watch: listening on %s again; caught up on %d change(s) "
                    "after change %d and reset every cache",
                    self.where,
                    caught_up,
                    since,
                )
            else:
                await self._deliver()  # anything committed while we connected
        except BaseException:
            # Failed, or cancelled (the store is closing) between connect and listening:
            # the connection must not be left for the garbage collector to find open.
            self._listen = None
            if conn is not None:
                conn.terminate()
            raise
        return conn

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
        listen, self._listen = self._listen, None
        if listen is not None:
            listen.terminate()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), 5)
        except (TimeoutError, *_CONNECTION_ERRORS):
            pool.terminate()


def _discard(conn: Any) -> None:
    """Close a pool connection that failed mid-protocol, so the pool opens a fresh one
    instead of handing the broken one out again."""
    with suppress(Exception):
        conn.terminate()
