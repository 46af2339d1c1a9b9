"""A real gateway for tests: a real upstream, a real SQLite store, real listeners.

``start_gateway`` runs :func:`permgate.runtime.app.serve` in the test's event loop on free
loopback ports, seeded with a small cast through :class:`ModelService`, and an
upstream that echoes what it received so tests can assert what crossed the sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from permgate.config import load_settings
from permgate.manage.service import Actor, ModelService
from permgate.runtime.app import Runtime, serve
from permgate.runtime.listeners import bind_listeners
from permgate.store import open_store

ISSUER = "https://idp.test/"
AUDIENCE = "insurance-api"

TEST_MAP = """
version: 1
defaults:
  tenant: {path_param: tenantLocator}
endpoints:
  - {id: quotes.create, method: POST, path: "/policy/{tenantLocator}/quotes",
     permissions: [quotes.write]}
  - {id: quotes.get, method: GET, path: "/policy/{tenantLocator}/quotes/{locator}",
     permissions: [quotes.read]}
  - {id: quotes.issue, method: POST, path: "/policy/{tenantLocator}/quotes/{locator}/issue",
     permissions: [quotes.read, policies.write]}
  - {id: quotes.price, method: POST, path: "/policy/{tenantLocator}/quotes/{locator}/price",
     any_of: [quotes.write, quotes.price]}
  - {id: search, method: POST, path: "/search/{tenantLocator}/search", permissions: [search.read]}
  - {id: ping, method: GET, path: "/policy/{tenantLocator}/ping", permissions: []}
  - {id: tokens.create, method: POST, path: /auth/tokens, permissions: [authTokens.write],
     tenant: none}
  - {id: legacy.quotes, method: GET, path: /legacy/quotes, permissions: [quote.fetch],
     tenant: {header: X-Tenant}}
  - {id: files.upload, method: PUT, path: "/files/{tenantLocator}/upload",
     permissions: [quotes.write]}
  - {id: files.download, method: GET, path: "/files/{tenantLocator}/download",
     permissions: [quotes.read]}
  - {id: slow, method: GET, path: "/slow/{tenantLocator}", permissions: []}
  - {id: health, method: GET, path: /health, public: true}
"""


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Await ``check()`` (sync or async) until truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now, for a server a test starts in another process.

    Chosen below the kernel's ephemeral range, which every outgoing connection and
    every bind to port 0 draws from: in between choosing and the child's bind, no
    connection of this or another test can take it. Never the same port twice in a
    run. (An in-process server binds port 0 and reads its port back instead.)"""
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    if ephemeral_low <= 11_000:  # no room below it: the kernel's choice, as before
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            chosen: int = probe.getsockname()[1]
            return chosen
    for _ in range(200):
        port = random.randrange(10_000, ephemeral_low)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port between 10000 and {ephemeral_low}")


def _port_of(addresses: list[Any]) -> int:
    port: int = addresses[0][1]
    return port


def _url_of(sockets: tuple[socket.socket, ...]) -> str:
    """The http URL of the first of ``sockets`` ("" when there is none)."""
    if not sockets:
        return ""
    host, port = sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


def rsa_key() -> tuple[Any, str]:
    """A fresh RSA key and its public half as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


@dataclass
class Upstream:
    """What the echo upstream received, request by request."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    slow_seconds: float = 2.0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("PUT", "/files/{tenant}/upload", self.upload)
        app.router.add_get("/files/{tenant}/download", self.download)
        app.router.add_get("/slow/{tenant}", self.slow)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": dict(request.headers),
            "body": body.decode(errors="replace"),
        }
        self.seen.append(seen)
        return web.json_response(seen)

    async def upload(self, request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def download(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first-chunk\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), timeout=10)
        await response.write(b"last-chunk\n")
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.slow_seconds)
        return web.json_response({"slow": True})


@dataclass
class Gateway:
    """A running gateway and everything a test needs to talk to it."""

    url: str
    admin_url: str
    authz_url: str  # "" unless the test asked for the decision service (authz_listen)
    runtime: Runtime
    service: ModelService
    upstream: Upstream
    tokens: dict[str, str]
    jwt_key: Any
    audit: io.StringIO

    def jwt(self, subject: str, **claims: Any) -> str:
        """A JWT for ``subject`` signed by the test identity provider."""
        now = int(time.time())
        payload = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        payload.update(claims)
        return jwt.encode(payload, self.jwt_key, algorithm="RS256")

    def audit_lines(self) -> list[str]:
        return [line for line in self.audit.getvalue().splitlines() if line]


async def seed(service: ModelService) -> dict[str, str]:
    """The cast every gateway test shares; returns token secrets by name."""
    cli = Actor.cli()
    for account in ("acme", "globex"):
        await service.ensure_account(cli, account)
    await service.create_tenant(cli, "acme", "acme-prod", type="PRODUCTION", enforcement="enforce")
    await service.create_tenant(cli, "acme", "acme-test", type="TEST", enforcement="enforce")
    await service.create_tenant(cli, "acme", "acme-shadow", type="PRODUCTION", enforcement="shadow")
    await service.create_tenant(cli, "globex", "globex-prod", enforcement="enforce")
    await service.create_role(
        cli, "acme", "sales-agent", "Sales Agent", ["quotes.read", "quotes.write"]
    )
    await service.create_role(cli, "acme", "reader", "Reader", ["quotes.read"])
    await service.create_role(cli, "acme", "legacy", "Legacy", ["quote.fetch"])
    await service.create_role(cli, "acme", "pricer", "Pricer", ["quotes.price"])
    principals: Mapping[str, tuple[list[str], list[tuple[str, str | None]]]] = {
        "alice": (["acme-prod", "acme-shadow"], [("sales-agent", None)]),
        "bob": (["any"], [("reader", None), ("legacy", None)]),
        "dave": (["any"], [("sales-agent", "acme-test")]),
        "erin": (["type:test"], [("read-only", None), ("pricer", None)]),
        "root": ([], [("admin", None)]),
        "carol": (["acme-prod"], [("sales-agent", None)]),
    }
    for principal_id, (tenants, roles) in principals.items():
        await service.create_principal(cli, "acme", principal_id, tenants=tenants, roles=roles)
    await service.create_principal(cli, "globex", "gus", tenants=["any"], roles=[("admin", None)])
    tokens: dict[str, str] = {}
    grants = {
        "alice": (["quotes.read", "quotes.write"], ["acme-prod", "acme-shadow"]),
        "alice-readonly": (["quotes.read"], ["acme-prod"]),
        "bob": (["quotes.read", "quote.fetch"], ["any"]),
        "root": (["*.*"], ["any"]),
        "carol": (["quotes.read"], ["acme-prod"]),
        "gus": (["*.*"], ["any"]),
    }
    for name, (permissions, tenants) in grants.items():
        owner = name.split("-")[0]
        _, secret = await service.create_token(cli, owner, name, permissions, tenants)
        tokens[name] = secret
    await service.update_principal(cli, "carol", disabled=True)
    return tokens


@contextlib.asynccontextmanager
async def start_gateway(
    tmp_path: Path, upstream_url: str | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """Seed a store, start an echo upstream and the gateway; stop all on exit."""
    dsn = f"sqlite://{tmp_path}/permgate.db"
    store = await open_store(dsn)
    try:
        tokens = await seed(ModelService(store))
    finally:
        await store.close()
    upstream = Upstream()
    upstream_runner = web.AppRunner(upstream.app(), access_log=None)
    await upstream_runner.setup()
    await web.TCPSite(upstream_runner, "127.0.0.1", 0).start()
    upstream_port = _port_of(upstream_runner.addresses)
    map_path = tmp_path / "endpoint_map.yaml"
    map_path.write_text(TEST_MAP, encoding="utf-8")
    key, public_pem = rsa_key()
    settings = load_settings(
        env={},
        overrides={
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "upstream": upstream_url or f"http://127.0.0.1:{upstream_port}",
            "endpoint_map": str(map_path),
            "map_poll_seconds": 0.1,
            "store": dsn,
            "auth.jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "keys": [public_pem],
                "algorithms": ["RS256"],
            },
            **overrides,
        },
    )
    # Bound here on port 0 and handed to serve(): the kernel's ports, read back from
    # the sockets, cannot be taken by anyone else between choosing and binding.
    listeners = bind_listeners(settings)
    audit = io.StringIO()
    stop = asyncio.Event()
    ready: asyncio.Future[Runtime] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings,
            listeners=listeners,
            stop=stop,
            on_ready=ready.set_result,
            handle_signals=False,
            audit_stream=audit,
        )
    )
    try:
        # Whichever comes first: ready, or serve() ending (it failed to start: say why
        # at once instead of waiting out the timeout with its exception unseen).
        await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            if task.done():
                raise AssertionError("the gateway did not start") from task.exception()
            raise TimeoutError("the gateway was not ready within 30 s")
        runtime = ready.result()
    except BaseException:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await upstream_runner.cleanup()
        raise
    try:
        yield Gateway(
            url=_url_of(listeners.gateway),
            admin_url=_url_of(listeners.admin),
            authz_url=_url_of(listeners.authz),
            runtime=runtime,
            service=runtime.service,
            upstream=upstream,
            tokens=tokens,
            jwt_key=key,
            audit=audit,
        )
    finally:
        stop.set()
        await task
        await upstream_runner.cleanup()
