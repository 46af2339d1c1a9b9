"""Console world: a real Runtime (real SQLite store, service, cache, authenticator and
the real admin application with the console mounted), seeded through the service.

Account ``acme``: tenants acme-prod (PRODUCTION, enforce) and acme-test (TEST, shadow);
roles ``ops`` (tenants, principals, tokens, audit, roles.read: no admin powers) and
``agent`` (quotes.*); principals ``root`` (admin), ``alice`` (ops, scope acme-prod),
``carol`` (agent, scope acme-prod) and ``dave`` (no role); each has the password
:data:`PASSWORD` and an auth token named after it. Account ``globex``: ``gadmin``.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from harness import TEST_MAP, free_port
from permgate.config import load_settings
from permgate.manage.service import Actor
from permgate.runtime.app import Runtime

CLI = Actor.cli()
PASSWORD = "plum-orbit-quiet-lantern-42"
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
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')

ClientFactory = Callable[[web.Application], Coroutine[Any, Any, TestClient[Any, Any]]]


@dataclass
class Page:
    """One console answer: status, HTML text, headers and the final URL path."""

    status: int
    text: str
    headers: Any
    path: str

    @property
    def csrf(self) -> str:
        """The CSRF token of the page's forms."""
        found = CSRF_FIELD.search(self.text)
        assert found is not None, f"no csrf field on {self.path}"
        return found.group(1)


@dataclass
class World:
    """The runtime and a client on its admin application."""

    runtime: Runtime
    client: TestClient[Any, Any]
    secrets: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)

    async def get(self, path: str, **kwargs: Any) -> Page:
        """GET a console path, following redirects."""
        async with self.client.get(path, **kwargs) as response:
            text = await response.text()
            return Page(response.status, text, response.headers, response.url.path)

    async def post(self, path: str, data: dict[str, Any], *, follow: bool = True) -> Page:
        """POST a form (``application/x-www-form-urlencoded``)."""
        async with self.client.post(path, data=data, allow_redirects=follow) as response:
            text = await response.text()
            return Page(response.status, text, response.headers, response.url.path)

    async def sign_in(self, principal: str, password: str = PASSWORD) -> Page:
        """Sign in through the form (its double-submit CSRF token included)."""
        form = await self.get("/console/login")
        return await self.post(
            "/console/login",
            {"csrf": form.csrf, "principal": principal, "password": password},
        )

    async def sign_in_token(self, secret: str) -> Page:
        """Sign in with an auth token through the form."""
        form = await self.get("/console/login")
        return await self.post("/console/login", {"csrf": form.csrf, "token": secret})

    async def csrf(self) -> str:
        """The signed-in session's CSRF token, read from a page."""
        return (await self.get("/console/")).csrf

    def forget_cookies(self) -> None:
        """A new browser: no cookie at all."""
        self.client.session.cookie_jar.clear()


async def seed(runtime: Runtime) -> dict[str, tuple[str, str]]:
    """The cast (see the module docstring); returns token (id, secret) by name."""
    service = runtime.service
    await service.ensure_account(CLI, "acme")
    await service.create_tenant(CLI, "acme", "acme-prod", type="PRODUCTION", enforcement="enforce")
    await service.create_tenant(CLI, "acme", "acme-test", type="TEST", enforcement="shadow")
    await service.create_role(CLI, "acme", "ops", "Operations", OPS)
    await service.create_role(CLI, "acme", "agent", "Agent", ["quotes.*"])
    await service.create_principal(CLI, "acme", "root", roles=[("admin", None)])
    await service.create_principal(
        CLI, "acme", "alice", tenants=["acme-prod"], roles=[("ops", None)]
    )
    await service.create_principal(
        CLI, "acme", "carol", tenants=["acme-prod"], roles=[("agent", None)]
    )
    await service.create_principal(CLI, "acme", "dave", tenants=["acme-prod"])
    await service.ensure_account(CLI, "globex")
    await service.create_principal(CLI, "globex", "gadmin", roles=[("admin", None)])
    for name in ("root", "alice", "carol", "dave", "gadmin"):
        await service.set_password(CLI, name, PASSWORD)
    specs = {
        "root": ("root", ["*.*"], ["any"]),
        "alice": ("alice", OPS, ["acme-prod"]),
        "carol": ("carol", ["quotes.read"], ["acme-prod"]),
    }
    tokens: dict[str, tuple[str, str]] = {}
    for name, (owner, grants, scope) in specs.items():
        token, secret = await service.create_token(CLI, owner, name, grants, scope)
        tokens[name] = (token.id, secret)
    await runtime.deliver_changes()
    return tokens


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """A started Runtime on a fresh SQLite store (gateway listener not served)."""
    map_path = tmp_path / "endpoint_map.yaml"
    map_path.write_text(TEST_MAP, encoding="utf-8")
    settings = load_settings(
        env={},
        overrides={
            "listen": f"127.0.0.1:{free_port()}",
            "admin_listen": f"127.0.0.1:{free_port()}",
            "upstream": f"http://127.0.0.1:{free_port()}",
            "endpoint_map": str(map_path),
            "store": f"sqlite://{tmp_path / 'permgate.db'}",
        },
    )
    built = Runtime(settings, audit_stream=io.StringIO())
    await built.start()
    try:
        yield built
    finally:
        await built.stop()


@pytest.fixture
async def world(runtime: Runtime, aiohttp_client: ClientFactory) -> World:
    """The seeded runtime's admin application (console included) behind a client."""
    tokens = await seed(runtime)
    client = await aiohttp_client(runtime.admin_application())
    built = World(runtime, client)
    built.secrets = {name: secret for name, (_, secret) in tokens.items()}
    built.token_ids = {name: token_id for name, (token_id, _) in tokens.items()}
    return built
