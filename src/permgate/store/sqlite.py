"""The embedded store: one SQLite file in WAL mode, no server.

Three connections per store object: one for reads (each read in a short deferred
transaction, so a principal and its roles come from one snapshot), one for writes
(``BEGIN IMMEDIATE``: one writer at a time, across processes too, waiting up to the
busy timeout), and a side connection for change delivery and pings, so neither waits
behind request-path lookups queued on the reader. Other processes' changes are
noticed by polling the change log since the last seen version, a single indexed
read, every 200 ms.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import lru_cache
from typing import Any, Final

import aiosqlite

from permgate.core.errors import StoreUnavailable
from permgate.store.backend import SqlStore, log
from permgate.store.migrations import LATEST, migrate
from permgate.store.sql import Transaction

POLL_SECONDS: Final = 0.2
BUSY_TIMEOUT_MS: Final = 10_000


@lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    """``$1`` placeholders as SQLite's numbered ``?1``."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


class _Conn:
    """The :class:`permgate.store.sql.Connection` calls over an aiosqlite connection."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: object) -> list[Sequence[Any]]:
        # One trip to the connection's thread, not three (execute, fetch, close): under
        # load each trip waits a turn of a busy event loop.
        return list(await self._db.execute_fetchall(_qmark(sql), args))

    async def execute(self, sql: str, *args: object) -> None:
        await self._db.execute(_qmark(sql), args)


class SQLiteStore(SqlStore):
    """A store in one SQLite file; see :class:`permgate.store.base.Store`."""

    dialect = "sqlite"
    _BACKEND_ERRORS = (sqlite3.Error,)
    _CONFLICT_ERROR = sqlite3.IntegrityError

    def __init__(self, dsn: str, path: str) -> None:
        super().__init__(dsn)
        self.path = path
        self._reader: aiosqlite.Connection | None = None
        self._writer: aiosqlite.Connection | None = None
        self._side: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()
        self._side_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str, path: str, *, schema_target: int = LATEST) -> SQLiteStore:
        """Open (creating if needed) and migrate the file at ``path``."""
        store = cls(dsn, path)
        try:
            # Probe synchronously first: a failed aiosqlite connect leaves its worker
            # thread finishing against the event loop after we have moved on.
            sqlite3.connect(path).close()
        except sqlite3.Error as exc:
            raise store._unavailable(exc) from exc
        async with store._opening():
            store._writer = await store._connect()
            await store._writer.execute("PRAGMA journal_mode=WAL")
            async with store._write_lock:
                await store._writer.execute("BEGIN IMMEDIATE")
                try:
                    await migrate(_Conn(store._writer), "sqlite", schema_target)
                    await store._writer.execute("COMMIT")
                except BaseException:
                    with suppress(sqlite3.Error):
                        await store._writer.execute("ROLLBACK")
                    raise
            store._reader = await store._connect()
            store._side = await store._connect()
        return store

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            await db.close()
            raise
        return db

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"cannot use the SQLite store at {self.path}: {exc}")

    def _read(self) -> AbstractAsyncContextManager[Transaction]:
        return self._snapshot(self._reader, self._read_lock)

    def _side_read(self) -> AbstractAsyncContextManager[Transaction]:
        # The side connection only ever runs one statement at a time (the log since a
        # version, or its newest version): no transaction needed.
        return self._statement(self._side, self._side_lock)

    def _point_read(self) -> AbstractAsyncContextManager[Transaction]:
        return self._statement(self._reader, self._read_lock)

    @asynccontextmanager
    async def _statement(
        self, conn: aiosqlite.Connection | None, lock: asyncio.Lock
    ) -> AsyncIterator[Transaction]:
        """For ONE statement: in autocommit mode it is one snapshot by itself, so no
        BEGIN/COMMIT trips to the connection's thread."""
        db = self._require(conn)
        async with lock:
            try:
                yield Transaction(_Conn(db), writable=False)
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    @asynccontextmanager
    async def _snapshot(
        self, conn: aiosqlite.Connection | None, lock: asyncio.Lock
    ) -> AsyncIterator[Transaction]:
        db = self._require(conn)
        async with lock:
            try:
                await db.execute("BEGIN")
                try:
                    yield Transaction(_Conn(db), writable=False)
                finally:
                    await db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        db = self._require(self._writer)
        async with self._write_lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            tx = Transaction(_Conn(db), writable=True)
            try:
                yield tx
                await tx.flush_changes(time.time())
                await db.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise

    def _require(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None or self._closed:
            raise StoreUnavailable(f"the SQLite store at {self.path} is closed")
        return db

    async def _watch_loop(self) -> None:
        healthy = True
        while True:
            await asyncio.sleep(POLL_SECONDS)
            ok = await self._deliver_quietly()
            if ok and not healthy:
                log.info("store watch: %s reachable again", self.path)
            healthy = ok

    async def _close_connections(self) -> None:
        for db in (self._reader, self._side, self._writer):
            if db is not None:
                with suppress(sqlite3.Error, ValueError):
                    await db.close()
        self._reader = self._side = self._writer = None
