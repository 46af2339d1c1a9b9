"""Where the access model lives: SQLite (embedded default) or PostgreSQL (fleets).

:func:`open_store` turns a DSN into an open, migrated :class:`Store`:

* ``sqlite://PATH``: the file at PATH exactly as written after ``sqlite://``, so
  ``sqlite:///var/lib/permgate/permgate.db`` is absolute and ``sqlite://permgate.db``
  is relative to the working directory. The file is created if missing (its
  directory must exist).
* ``postgresql://...`` or ``postgres://...``: an asyncpg DSN.

The backends are imported only when chosen, so SQLite users never load asyncpg.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from permgate.core.errors import ConfigError, StoreUnavailable
from permgate.store.base import AuditRecord, Change, Store, StoreReader
from permgate.store.migrations import LATEST

if TYPE_CHECKING:
    from permgate.store.sql import Transaction

__all__ = [
    "AuditRecord",
    "Change",
    "Store",
    "StoreReader",
    "Transaction",
    "open_store",
    "sqlite_path",
]

_SQLITE: str = "sqlite://"
_POSTGRES: tuple[str, ...] = ("postgresql://", "postgres://")


def sqlite_path(dsn: str) -> str | None:
    """The file a ``sqlite://`` DSN names, or None for any other DSN."""
    if not dsn.startswith(_SQLITE):
        return None
    return dsn[len(_SQLITE) :]


def _bad_dsn(dsn: str, why: str) -> ConfigError:
    return ConfigError(
        [
            f"store: {dsn!r} {why}; expected sqlite:///ABSOLUTE/PATH.db, "
            "sqlite://RELATIVE/PATH.db or postgresql://USER@HOST:PORT/DATABASE"
        ]
    )


async def open_store(dsn: str, *, schema_target: int = LATEST) -> Store:
    """Open the store a DSN names and bring its schema up to date.

    Raises :class:`ConfigError` for a DSN of no known form and
    :class:`permgate.core.errors.StoreUnavailable` (naming the file or host) when the
    store cannot be opened. ``schema_target`` exists for migration tests.
    """
    path = sqlite_path(dsn)
    if path is not None:
        if not path or path == ":memory:":
            raise _bad_dsn(dsn, "names no file (an in-memory store cannot be shared)")
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            why = f"the folder {folder} does not exist (the file is created, its folder is not)"
            raise StoreUnavailable(f"store {dsn}: {why}")
        from permgate.store.sqlite import SQLiteStore

        return await SQLiteStore.open(dsn, path, schema_target=schema_target)
    if dsn.startswith(_POSTGRES):
        from permgate.store.postgres import PostgresStore

        return await PostgresStore.open(dsn, schema_target=schema_target)
    raise _bad_dsn(dsn, "is not a supported store DSN")
