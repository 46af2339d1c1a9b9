"""Tokens minted by tokens, through the admin API with real auth tokens: a token
cannot create one that outlives it, the new token remembers its parent, and
revoking a token revokes everything descended from it, at once, on the gateway too."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp
import pytest

from admin_world import BACKENDS, World
from harness import Gateway
from permgate.manage.service import Actor

HOUR = 3600


async def _minter(world: World, name: str, expires_in: float | None) -> str:
    """A token of root holding authTokens.write (and quotes/tenants reads), made by the
    operator; its secret is stored under ``name``; returns its id."""
    token, secret = await world.service.create_token(
        Actor.cli(),
        "root",
        name,
        ["authTokens.write", "authTokens.read", "tenants.read", "quotes.read"],
        ["acme-prod"],
        expires_in,
    )
    world.secrets[name] = secret
    world.token_ids[name] = token.id
    return token.id


async def _mint(world: World, who: str, name: str, **fields: Any) -> Any:
    body = {"name": name, "permissions": ["tenants.read"], "tenants": ["acme-prod"], **fields}
    answer = await world.call("POST", "/v1/tokens", who=who, json=body)
    if answer.status == 201:
        world.secrets[name] = answer.body["secret"]
        world.token_ids[name] = answer.body["id"]
    return answer


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


LIFETIMES = [
    pytest.param(HOUR, {"expires_in": 600}, 201, "", id="shorter-than-the-caller"),
    pytest.param(HOUR, {"expires_in": HOUR - 5}, 201, "", id="just-inside"),
    pytest.param(HOUR, {"expires_in": 2 * HOUR}, 422, "give expires_in of at most", id="longer"),
    pytest.param(HOUR, {}, 422, "no expiry, later than its own", id="permanent-from-expiring"),
    pytest.param(None, {}, 201, "", id="permanent-from-permanent"),
    pytest.param(None, {"expires_in": 10 * 365 * 86400}, 201, "", id="ten-years-from-permanent"),
]


@pytest.mark.parametrize(("caller_life", "fields", "status", "detail"), LIFETIMES)
async def test_a_token_cannot_mint_a_token_that_outlives_it(
    world: World, caller_life: float | None, fields: dict[str, Any], status: int, detail: str
) -> None:
    """The new token's expiry is at most the calling token's; a calling token that
    never expires imposes no limit; asking an expiring token for no expiry is a 422."""
    await _minter(world, "minter", caller_life)
    answer = await _mint(world, "minter", "child", **fields)
    assert answer.status == status, answer.body
    if status == 422:
        assert detail in answer.body["detail"]
        assert world.token_ids["minter"] in answer.body["detail"]
        return
    parent = next(
        t
        for t in (await world.call("GET", "/v1/tokens")).body["items"]
        if t["id"] == world.token_ids["minter"]
    )
    if parent["expires_at"] is not None:
        assert _at(answer.body["expires_at"]) <= _at(parent["expires_at"])


async def test_every_excess_over_the_calling_token_is_listed_at_once(world: World) -> None:
    """Wider grants, wider tenants and a longer life: one 422 naming all three."""
    await _minter(world, "minter", HOUR)
    answer = await _mint(
        world,
        "minter",
        "child",
        permissions=["principals.read"],
        tenants=["any"],
        expires_in=2 * HOUR,
    )
    assert answer.status == 422
    detail = answer.body["detail"]
    assert "permissions it does not grant: principals.read" in detail
    assert "tenants outside its scope: any" in detail
    assert "give expires_in of at most" in detail


async def test_an_operator_made_token_has_no_parent(world: World) -> None:
    """A token made by the operator (no calling token) has parent_token_id null."""
    await _minter(world, "minter", HOUR)
    listed = (await world.call("GET", "/v1/tokens")).body["items"]
    minter = next(t for t in listed if t["id"] == world.token_ids["minter"])
    assert minter["parent_token_id"] is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_minted_token_records_its_parent(world: World) -> None:
    """The answer and the listing name the calling token as parent_token_id."""
    parent = await _minter(world, "minter", HOUR)
    created = await _mint(world, "minter", "child", expires_in=600)
    assert created.body["parent_token_id"] == parent
    listed = (await world.call("GET", "/v1/tokens")).body["items"]
    assert {t["id"]: t["parent_token_id"] for t in listed}[created.body["id"]] == parent


@pytest.mark.parametrize("backend", BACKENDS)
async def test_revoking_a_token_revokes_its_descendants_at_once(world: World) -> None:
    """minter -> child -> grandchild: revoking minter makes both descendants 401
    revoked_token on the very next request; an unrelated token keeps working."""
    await _minter(world, "minter", HOUR)
    child = await _mint(
        world,
        "minter",
        "child",
        permissions=["authTokens.write", "tenants.read"],
        expires_in=1800,
    )
    assert child.status == 201, child.body
    grandchild = await _mint(world, "child", "grandchild", expires_in=900)
    assert grandchild.status == 201, grandchild.body
    assert grandchild.body["parent_token_id"] == child.body["id"]
    for name in ("child", "grandchild"):
        assert (await world.call("GET", "/v1/tenants", who=name)).status == 200
    revoked = await world.call("DELETE", f"/v1/tokens/{world.token_ids['minter']}")
    assert revoked.status == 200
    assert revoked.body["revoked_descendants"] == [
        world.token_ids["child"],
        world.token_ids["grandchild"],
    ]
    for name in ("minter", "child", "grandchild"):
        refused = await world.call("GET", "/v1/tenants", who=name)
        assert (refused.status, refused.body["reason"]) == (401, "revoked_token"), name
    assert (await world.call("GET", "/v1/tenants", who="alice")).status == 200


async def test_cascade_is_audited_per_token(world: World) -> None:
    """The revocation is token.revoke; each descendant it took is token.revoke.cascade."""
    await _minter(world, "minter", HOUR)
    await _mint(world, "minter", "child", expires_in=600)
    await world.call("DELETE", f"/v1/tokens/{world.token_ids['minter']}")
    items = (await world.call("GET", "/v1/audit?limit=5")).body["items"]
    actions = {(i["action"], i["target"]) for i in items}
    assert ("token.revoke", world.token_ids["minter"]) in actions
    assert ("token.revoke.cascade", world.token_ids["child"]) in actions
    cascade = next(i for i in items if i["action"] == "token.revoke.cascade")
    assert cascade["actor"] == "principal:root"
    assert cascade["before"]["revoked_at"] is None
    assert cascade["after"]["revoked_at"] is not None
    assert cascade["after"]["parent_token_id"] == world.token_ids["minter"]


async def test_revoking_a_child_leaves_its_parent_and_siblings(world: World) -> None:
    """Revocation flows down the lineage only."""
    await _minter(world, "minter", HOUR)
    await _mint(world, "minter", "child", expires_in=600)
    await _mint(world, "minter", "sibling", expires_in=600)
    revoked = await world.call("DELETE", f"/v1/tokens/{world.token_ids['child']}")
    assert (revoked.status, revoked.body["revoked_descendants"]) == (200, [])
    for name in ("minter", "sibling"):
        assert (await world.call("GET", "/v1/tenants", who=name)).status == 200


async def test_a_revoked_token_cannot_mint(world: World) -> None:
    """A revoked calling token is refused before anything is created (401)."""
    await _minter(world, "minter", HOUR)
    await world.call("DELETE", f"/v1/tokens/{world.token_ids['minter']}")
    answer = await _mint(world, "minter", "late", expires_in=60)
    assert (answer.status, answer.body["reason"]) == (401, "revoked_token")


async def test_lifetime_cap_and_cascade_on_the_gateway(gw: Gateway) -> None:
    """Through a running gateway's admin API with real tokens: an expiring token cannot
    mint a longer-lived one; what it mints works on the gateway until the parent is
    revoked, and from the next request on is refused there."""
    admin = f"{gw.admin_url}/v1/tokens"
    root = {"Authorization": f"Bearer {gw.tokens['root']}"}
    async with aiohttp.ClientSession() as http:
        body = {
            "name": "ci",
            "permissions": ["authTokens.write", "quotes.read"],
            "tenants": ["acme-prod"],
            "expires_in": HOUR,
        }
        async with http.post(admin, json=body, headers=root) as r:
            parent = await r.json()
        assert r.status == 201, parent
        as_parent = {"Authorization": f"Bearer {parent['secret']}"}
        child_body = {"name": "step", "permissions": ["quotes.read"], "tenants": ["acme-prod"]}
        async with http.post(
            admin, json={**child_body, "expires_in": 2 * HOUR}, headers=as_parent
        ) as r:
            assert r.status == 422
            assert "give expires_in of at most" in (await r.json())["detail"]
        async with http.post(admin, json={**child_body, "expires_in": 600}, headers=as_parent) as r:
            child = await r.json()
        assert r.status == 201, child
        assert child["parent_token_id"] == parent["id"]
        quote_url = f"{gw.url}/policy/acme-prod/quotes/q1"
        as_child = {"Authorization": f"Bearer {child['secret']}"}
        async with http.get(quote_url, headers=as_child) as r:
            assert r.status == 200
        async with http.delete(f"{admin}/{parent['id']}", headers=root) as r:
            assert r.status == 200
        async with http.get(quote_url, headers=as_child) as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "revoked_token"
