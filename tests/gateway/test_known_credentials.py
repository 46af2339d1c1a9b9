"""Remembered credentials end to end: a bearer credential verified once is answered from
memory, and every change that should refuse it still does on the very next request.
"""

from __future__ import annotations

import aiohttp

from harness import Gateway
from permgate.core.token_secrets import new_secret
from permgate.manage.service import Actor

QUOTE = "/policy/acme-prod/quotes/q1"


async def status_reason(http: aiohttp.ClientSession, gw: Gateway, secret: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with http.get(gw.url + QUOTE, headers=headers) as response:
        body = await response.json() if response.status != 200 else {}
        return response.status, str(body.get("reason", ""))


def token_id(secret: str) -> str:
    return secret.removeprefix("pgt_").split("_")[0]


async def used_from_memory(http: aiohttp.ClientSession, gw: Gateway, secret: str) -> None:
    """Use the secret until it is answered from memory (the second use is)."""
    for _ in range(3):
        assert await status_reason(http, gw, secret) == (200, "")
    assert gw.runtime.authenticator.known_credentials >= 1


async def test_revoked_token_answered_from_memory_is_refused_on_the_next_request(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Revoking a token the gateway answers from memory refuses its very next request."""
    secret = gw.tokens["alice"]
    await used_from_memory(http, gw, secret)
    await gw.service.revoke_token(Actor.cli(), token_id(secret))
    await gw.runtime.deliver_changes()
    assert await status_reason(http, gw, secret) == (401, "revoked_token")


async def test_disabled_owner_of_a_token_answered_from_memory_is_refused_at_once(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Disabling the owner of a token the gateway answers from memory refuses its very
    next request."""
    secret = gw.tokens["alice"]
    await used_from_memory(http, gw, secret)
    await gw.service.update_principal(Actor.cli(), "alice", disabled=True)
    await gw.runtime.deliver_changes()
    assert await status_reason(http, gw, secret) == (401, "disabled_principal")


async def test_guessed_secret_for_a_remembered_token_id_is_refused(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Another random part behind the id of a token answered from memory is an
    invalid token, and is not remembered."""
    secret = gw.tokens["alice"]
    await used_from_memory(http, gw, secret)
    remembered = gw.runtime.authenticator.known_credentials
    guess = new_secret("pgt_", token_id(secret))
    assert await status_reason(http, gw, guess) == (401, "invalid_token")
    assert gw.runtime.authenticator.known_credentials == remembered
