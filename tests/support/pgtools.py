"""PostgreSQL for tests: the server from ``PERMGATE_TEST_PG_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``), one fresh database per test.

With ``CI=true`` an unreachable server fails the test; elsewhere the test skips and
says how to enable it (DEVELOPERS.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

PG_DSN = os.environ.get("PERMGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


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


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped (connections and all) on exit."""
    name = f"pg_{secrets.token_hex(6)}"
    admin = await server_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(PG_DSN, name)
    finally:
        admin = await server_connection()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
