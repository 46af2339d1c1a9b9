"""Token lineage under ``permgate serve --workers 2``: revoking a parent through the
admin API binds every worker before the answer, for the tokens it minted too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway_procs import Outcome, Served, echo_upstream, outcome, serve_sqlite

pytestmark = [pytest.mark.slow]

QUOTE = "/policy/acme-prod/quotes/q1"


async def _spread(http: aiohttp.ClientSession, served: Served, secret: str) -> set[Outcome]:
    """40 requests, one connection each, ten at a time, so both workers answer some."""
    answers: list[Outcome] = []
    for _ in range(4):
        answers += await asyncio.gather(
            *(outcome(http, "GET", served.url + QUOTE, secret) for _ in range(10))
        )
    return set(answers)


async def test_revoking_a_parent_refuses_its_child_on_every_worker(tmp_path: Path) -> None:
    """A child minted by an expiring token works on both workers; once the parent's
    revocation is answered, none of the next 40 requests with the child is allowed."""
    async with echo_upstream() as upstream, serve_sqlite(tmp_path, upstream, workers=2) as served:
        tokens = f"{served.admin_url}/v1/tokens"
        root = {"Authorization": f"Bearer {served.tokens['root']}"}
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
        async with aiohttp.ClientSession(connector=connector) as http:
            body = {
                "name": "ci",
                "permissions": ["authTokens.write", "quotes.read"],
                "tenants": ["acme-prod"],
                "expires_in": 3600,
            }
            async with http.post(tokens, json=body, headers=root) as response:
                parent = await response.json()
            as_parent = {"Authorization": f"Bearer {parent['secret']}"}
            body = {"name": "step", "permissions": ["quotes.read"], "tenants": ["acme-prod"]}
            async with http.post(tokens, json={**body, "expires_in": 600}, headers=as_parent) as r:
                child = await r.json()
                assert r.status == 201, child
            assert await _spread(http, served, child["secret"]) == {(200, None)}
            async with http.delete(f"{tokens}/{parent['id']}", headers=root) as response:
                assert response.status == 200
            assert await _spread(http, served, child["secret"]) == {(401, "revoked_token")}
