"""Admin API world: a real store, the real service, cache and authenticator, and the
admin API mounted under ``/v1`` of a root app served on loopback.

Account ``acme``: tenants acme-prod (PRODUCTION, enforce) and acme-test (TEST, shadow);
roles ``ops`` (tenants, principals, tokens, audit, roles.read: everything but the
admin powers) and ``agent`` (quotes.*); principals ``root`` (admin), ``alice`` and
``bob`` (ops, scope acme-prod), ``carol`` (agent only), ``frank`` (full-access: every
permission, no admin powers). Account ``globex``: tenant
globex-prod, ``gadmin`` (admin) and ``gus``. Each principal has an auth token named
after it (``root`` also ``root-narrow``, principals.read only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from permgate.admin import create_admin_api
from permgate.core.endpoints import EndpointMap
from permgate.gateway.authn import Authenticator
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import Actor, ModelService
from permgate.maps.loader import parse_map
from permgate.store import Store, open_store
from pgtools import fresh_database

CLI = Actor.cli()
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

OPS = [
    "tenants.read",
    "tenants.write",
    "principals.read",
    "principals.write",
    "authTokens.read",
    "authTokens.write",
    "audit.read",
    "roles.read",
]

GATEWAY_MAP = """
version: 1
defaults: {tenant: {path_param: tenantLocator}}
endpoints:
  - id: quotes.get
    method: GET
    path: /policy/{tenantLocator}/quotes/{locator}
    permissions: [quotes.read]
  - id: quotes.create
    method: POST
    path: /policy/{tenantLocator}/quotes
    permissions: [quotes.write]
  - id: claims.list
    method: GET
    path: /claims
    permissions: [claims.read]
    tenant: {header: X-Tenant}
  - {id: health, method: GET, path: /health, public: true}
"""

ClientFactory = Callable[[web.Application], Coroutine[Any, Any, TestClient[Any, Any]]]


@dataclass
class Answer:
    """One HTTP answer: status, parsed JSON body (None when empty) and headers."""

    status: int
    body: Any
    headers: Any


@dataclass
class World:
    """Everything a test drives or reads back."""

    store: Store
    service: ModelService
    model: ModelCache
    client: TestClient[Any, Any]
    secrets: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)
    committed: int = 0

    async def call(
        self,
        method: str,
        path: str,
        who: str | None = "root",
        json: Any = None,
        *,
        data: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Call the admin API as ``who`` (a token name of the seed; None: anonymous)."""
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.secrets[who]}"
        if json is not None:
            data = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=sent) as response:
            raw = await response.read()
            body = orjson.loads(raw) if raw else None
            return Answer(response.status, body, response.headers)


class Deliver:
    """``on_committed``: read the store's change log since the last delivery and apply
    it to the model cache, as the app's watcher does."""

    def __init__(self, store: Store, model: ModelCache, world: list[World]) -> None:
        self._store = store
        self._model = model
        self._world = world
        self.version = 0

    async def __call__(self) -> None:
        changes = await self._store.changes_since(self.version)
        if changes:
            self.version = changes[-1].version
            self._model.apply_changes(changes)
        self._world[0].committed += 1


@pytest.fixture
def backend() -> str:
    """The store backend; tests parametrize ``backend`` with BACKENDS to run on both."""
    return "sqlite"


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, open store on ``backend``, closed (and dropped) afterwards."""
    if backend == "sqlite":
        opened = await open_store(f"sqlite://{tmp_path / 's.db'}")
        yield opened
        await opened.close()
        return
    async with fresh_database() as dsn:
        opened = await open_store(dsn)
        yield opened
        await opened.close()


@pytest.fixture
def gateway_map() -> EndpointMap:
    return parse_map(GATEWAY_MAP, "gateway.yaml")


async def _seed(service: ModelService) -> dict[str, tuple[str, str]]:
    await service.ensure_account(CLI, "acme")
    await service.create_tenant(CLI, "acme", "acme-prod", type="PRODUCTION")
    await service.create_tenant(CLI, "acme", "acme-test", type="TEST", enforcement="shadow")
    await service.create_role(CLI, "acme", "ops", "Operations", OPS)
    await service.create_role(CLI, "acme", "agent", "Agent", ["quotes.*"])
    await service.create_principal(CLI, "acme", "root", roles=[("admin", None)])
    for name in ("alice", "bob"):
        await service.create_principal(
            CLI, "acme", name, tenants=["acme-prod"], roles=[("ops", None)]
        )
    await service.create_principal(
        CLI, "acme", "carol", tenants=["acme-prod"], roles=[("agent", None)]
    )
    await service.create_principal(
        CLI, "acme", "frank", tenants=["acme-prod"], roles=[("full-access", None)]
    )
    await service.ensure_account(CLI, "globex")
    await service.create_tenant(CLI, "globex", "globex-prod")
    await service.create_principal(CLI, "globex", "gadmin", roles=[("admin", None)])
    await service.create_principal(CLI, "globex", "gus", tenants=["globex-prod"])
    tokens: dict[str, tuple[str, str]] = {}
    specs = {
        "root": ("root", ["*.*"], ["any"]),
        "root-narrow": ("root", ["principals.read"], []),
        "alice": ("alice", OPS, ["acme-prod"]),
        "bob": ("bob", OPS, ["acme-prod"]),
        "carol": ("carol", ["quotes.read"], ["acme-prod"]),
        "frank": ("frank", ["*.*"], ["acme-prod"]),
        "gadmin": ("gadmin", ["*.*"], ["any"]),
    }
    for name, (owner, grants, scope) in specs.items():
        token, secret = await service.create_token(CLI, owner, name, grants, scope)
        tokens[name] = (token.id, secret)
    return tokens


@pytest.fixture
async def world(store: Store, gateway_map: EndpointMap, aiohttp_client: ClientFactory) -> World:
    """The seeded store behind a served admin API (see the module docstring)."""
    service = ModelService(store)
    tokens = await _seed(service)
    model = ModelCache(store)
    holder: list[World] = []
    deliver = Deliver(store, model, holder)
    deliver.version = await store.version()
    api = create_admin_api(
        service=service,
        authenticator=Authenticator(model, token_prefix="pgt_", jwt=None),
        model=model,
        endpoint_map=lambda: gateway_map,
        on_committed=deliver,
    )
    root = web.Application()
    root.add_subapp("/v1", api)
    client = await aiohttp_client(root)
    built = World(store, service, model, client)
    built.secrets = {name: secret for name, (_, secret) in tokens.items()}
    built.token_ids = {name: token_id for name, (token_id, _) in tokens.items()}
    holder.append(built)
    return built
