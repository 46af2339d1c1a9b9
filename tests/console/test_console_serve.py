"""The console under a real ``serve``: the Secure cookie attribute over a TLS admin
listener, and the gateway's decisions on the Audit page."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import aiohttp
import trustme
from aiohttp import web

from console_world import PASSWORD, seed
from gateway_procs import echo_upstream, serve_sqlite
from harness import eventually, free_port, start_gateway
from permgate.console.session import SESSION_COOKIE
from permgate.runtime.app import Runtime

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


async def test_session_cookie_is_secure_over_tls(runtime: Runtime, tmp_path: Path) -> None:
    """On a listener with TLS, the session cookie (and the sign-in cookie) is Secure."""
    await seed(runtime)
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    runner = web.AppRunner(runtime.admin_application(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    base = f"https://127.0.0.1:{port}/console"
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            async with client.get(f"{base}/login", ssl=client_ctx) as response:
                text = await response.text()
                assert "Secure" in response.headers["Set-Cookie"]
            csrf = CSRF.search(text).group(1)  # type: ignore[union-attr]
            async with client.post(
                f"{base}/login",
                data={"csrf": csrf, "principal": "root", "password": PASSWORD},
                ssl=client_ctx,
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                line = next(
                    v
                    for v in response.headers.getall("Set-Cookie")
                    if v.startswith(f"{SESSION_COOKIE}=")
                )
                assert "Secure" in line
                assert "HttpOnly" in line
    finally:
        await runner.cleanup()


async def test_audit_page_shows_the_gateways_recent_decisions(tmp_path: Path) -> None:
    """A request denied by the gateway of a running serve appears on the Audit page,
    filterable by decision."""
    async with start_gateway(tmp_path) as gw:
        async with aiohttp.ClientSession() as client:
            headers = {"Authorization": f"Bearer {gw.tokens['alice-readonly']}"}
            async with client.post(f"{gw.url}/policy/acme-prod/quotes", headers=headers) as r:
                assert r.status == 403
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            async with client.get(f"{gw.admin_url}/console/login") as response:
                csrf = CSRF.search(await response.text()).group(1)  # type: ignore[union-attr]
            async with client.post(
                f"{gw.admin_url}/console/login", data={"csrf": csrf, "token": gw.tokens["root"]}
            ) as response:
                assert response.url.path == "/console/"

            async def denied_request_listed() -> str | None:
                async with client.get(f"{gw.admin_url}/console/audit?decision=deny") as response:
                    assert response.status == 200
                    text = await response.text()
                return text if "POST /policy/acme-prod/quotes" in text else None

            # The audit writer gathers events for a moment before it writes them.
            text = await eventually(denied_request_listed, "the denied request on the Audit page")
        assert "missing_permission" in text


async def test_audit_page_shows_every_workers_decisions(tmp_path: Path) -> None:
    """Under ``serve --workers 2`` the Audit page, whichever worker answers it, lists the
    decisions of both workers (each connection may land on either)."""
    async with (
        echo_upstream() as upstream,
        serve_sqlite(tmp_path, upstream, workers=2) as served,
    ):
        headers = {"Authorization": f"Bearer {served.tokens['alice-readonly']}"}
        one_per_connection = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=one_per_connection) as client:

            async def both_workers_decided() -> bool:
                async with client.post(f"{served.url}/policy/acme-prod/quotes", headers=headers):
                    pass
                per_worker = [
                    [e for e in served.events(f) if e.get("event") == "decision"]
                    for f in served.audit_files()
                ]
                return len(per_worker) == 2 and all(per_worker)

            await eventually(both_workers_decided, "both workers to decide a request", 30)
        stamps = {e["ts"] for e in served.events() if e.get("event") == "decision"}

        jar = aiohttp.CookieJar(unsafe=True)
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(cookie_jar=jar, connector=fresh) as client:
            async with client.get(f"{served.admin_url}/console/login") as response:
                csrf = CSRF.search(await response.text()).group(1)  # type: ignore[union-attr]
            async with client.post(
                f"{served.admin_url}/console/login",
                data={"csrf": csrf, "token": served.tokens["root"]},
            ) as response:
                assert response.url.path == "/console/"
            for _ in range(6):  # several connections: both workers answer some
                async with client.get(f"{served.admin_url}/console/audit?decision=deny") as r:
                    text = await r.text()
                assert r.status == 200
                assert [ts for ts in stamps if ts not in text] == []
