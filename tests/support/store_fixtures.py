"""Store fixtures, imported by the store, manage and cli folders' conftest files:
every store test runs on a fresh SQLite file and on a fresh PostgreSQL database.

PostgreSQL comes from ``PERMGATE_TEST_PG_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test gets its own database,
dropped afterwards. With ``CI=true`` an unreachable server fails the test; elsewhere
the PostgreSQL half skips and says how to enable it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from permgate.manage.service import Actor, ModelService
from permgate.store import Store, open_store

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def store_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The DSN of a fresh store on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'permgate.db'}"
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
async def store(store_dsn: str) -> AsyncIterator[Store]:
    """An open store, closed after the test."""
    opened = await open_store(store_dsn)
    yield opened
    await opened.close()


@pytest.fixture
def service(store: Store) -> ModelService:
    """The model service over the test's store."""
    return ModelService(store)


CLI = Actor.cli()


@pytest.fixture
async def acme(service: ModelService) -> ModelService:
    """Account ``acme`` (tenants acme-prod, acme-test) and ``globex`` (globex-prod),
    with principals ``root`` (admin) and ``alice`` (no roles yet)."""
    await service.ensure_account(CLI, "acme")
    await service.create_tenant(CLI, "acme", "acme-prod", type="PRODUCTION")
    await service.create_tenant(CLI, "acme", "acme-test", type="TEST", enforcement="shadow")
    await service.ensure_account(CLI, "globex")
    await service.create_tenant(CLI, "globex", "globex-prod")
    await service.create_principal(CLI, "acme", "root", roles=[("admin", None)])
    await service.create_principal(CLI, "acme", "alice", tenants=["acme-prod"])
    await service.create_principal(CLI, "globex", "gadmin", roles=[("admin", None)])
    return service
