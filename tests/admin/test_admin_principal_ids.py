"""Principal ids through the admin API: unique regardless of case across the whole
deployment (409, as tenant ids), and SPIFFE ids (which hold ``/``) addressable by
their percent-encoded form and usable on the gateway."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from admin_world import BACKENDS, World
from harness import Gateway

SPIFFE = "spiffe://acme/svc-billing"
ENCODED = quote(SPIFFE, safe="")  # spiffe%3A%2F%2Facme%2Fsvc-billing

CASE_CLASHES = [
    pytest.param("root", "ALICE", "'alice'", id="same-account-upper"),
    pytest.param("root", "Bob", "'bob'", id="same-account-capital"),
    pytest.param("gadmin", "Alice", "'alice'", id="across-accounts"),
    pytest.param("root", "GUS", "'gus'", id="across-accounts-reverse"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("who", "principal_id", "taken"), CASE_CLASHES)
async def test_case_only_clash_is_409(
    world: World, who: str, principal_id: str, taken: str
) -> None:
    """A principal id equal to an existing one but for case is a 409 naming the
    existing id, in the caller's account or any other; nothing is created."""
    answer = await world.call("POST", "/v1/principals", who=who, json={"id": principal_id})
    assert answer.status == 409, answer.body
    assert answer.body["error"] == "conflict"
    assert "regardless of case" in answer.body["detail"]
    assert taken in answer.body["detail"]
    assert await world.store.get_principal(principal_id) is None


async def test_exact_clash_is_still_a_plain_409(world: World) -> None:
    """The exact id again: 409 without the case remark."""
    answer = await world.call("POST", "/v1/principals", json={"id": "alice"})
    assert answer.status == 409
    assert "regardless of case" not in answer.body["detail"]


async def _encoded(world: World, method: str, tail: str = "", json: Any = None) -> Any:
    """Call /v1/principals/<percent-encoded SPIFFE id><tail> with the bytes as written."""
    url = URL(f"/v1/principals/{ENCODED}{tail}", encoded=True)
    headers = {"Authorization": f"Bearer {world.secrets['root']}"}
    async with world.client.request(method, url, json=json, headers=headers) as response:
        return response.status, await response.json(), response.headers


@pytest.mark.parametrize("backend", BACKENDS)
async def test_spiffe_id_round_trips_through_every_principal_route(world: World) -> None:
    """A SPIFFE id is created, then read, patched, given roles and a scope through its
    percent-encoded path; the Location header is that encoded path."""
    created = await world.call("POST", "/v1/principals", json={"id": SPIFFE, "kind": "client"})
    assert created.status == 201, created.body
    assert created.body["id"] == SPIFFE
    assert created.headers["Location"] == f"/v1/principals/{ENCODED}"
    status, body, _ = await _encoded(world, "GET")
    assert (status, body["id"], body["kind"]) == (200, SPIFFE, "client")
    status, body, _ = await _encoded(world, "PATCH", json={"disabled": True})
    assert (status, body["disabled"]) == (200, True)
    status, body, _ = await _encoded(world, "PUT", "/roles", json=[{"role": "agent"}])
    assert (status, body["roles"]) == (200, [{"role": "agent", "tenant": None}])
    status, body, _ = await _encoded(world, "PUT", "/tenants", json=["acme-prod"])
    assert (status, body["tenants"]) == (200, ["acme-prod"])
    listed = (await world.call("GET", "/v1/principals")).body["items"]
    assert SPIFFE in [p["id"] for p in listed]


async def test_spiffe_id_owns_a_token_named_by_its_id(world: World) -> None:
    """owner=<SPIFFE id> in a body and in ?owner= (encoded) both address the principal."""
    principal = {"id": SPIFFE, "kind": "client", "roles": [{"role": "agent"}]}
    assert (await world.call("POST", "/v1/principals", json=principal)).status == 201
    body = {"name": "svc", "permissions": ["quotes.read"], "owner": SPIFFE}
    created = await world.call("POST", "/v1/tokens", json=body)
    assert created.status == 201, created.body
    listed = await world.call("GET", f"/v1/tokens?owner={ENCODED}")
    assert listed.status == 200
    assert [t["id"] for t in listed.body["items"]] == [created.body["id"]]


async def test_spiffe_id_unencoded_in_the_path_is_no_operation(world: World) -> None:
    """Its '/' must be percent-encoded: written raw, the path names no operation (404)."""
    await world.call("POST", "/v1/principals", json={"id": SPIFFE})
    url = URL(f"/v1/principals/{SPIFFE}", encoded=True)
    headers = {"Authorization": f"Bearer {world.secrets['root']}"}
    async with world.client.get(url, headers=headers) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"


@pytest.mark.parametrize(
    "principal_id",
    ["/leading-slash", "spiffe://acme/svc billing", "spiffe://acme/svc?x", "spiffe://acme/svc#x"],
    ids=["leading-slash", "space", "query", "fragment"],
)
async def test_ids_outside_the_grammar_are_still_refused(world: World, principal_id: str) -> None:
    """Allowing '/' allows nothing else: spaces, '?', '#' and a leading '/' are 422."""
    answer = await world.call("POST", "/v1/principals", json={"id": principal_id})
    assert answer.status == 422
    assert "principal id" in answer.body["detail"]


async def test_spiffe_principal_is_decided_on_the_gateway(gw: Gateway) -> None:
    """A SPIFFE principal made through a running gateway's admin API is read back by
    its encoded path, and allowed on the gateway by a JWT naming it and by its own auth
    token; a case variant of its id is unknown."""
    admin = {"Authorization": f"Bearer {gw.tokens['root']}"}
    async with aiohttp.ClientSession() as http:
        body = {"id": SPIFFE, "kind": "client", "tenants": ["acme-prod"]}
        body["roles"] = [{"role": "reader", "tenant": None}]
        async with http.post(f"{gw.admin_url}/v1/principals", json=body, headers=admin) as r:
            assert r.status == 201, await r.text()
        encoded = URL(f"{gw.admin_url}/v1/principals/{ENCODED}", encoded=True)
        async with http.get(encoded, headers=admin) as r:
            assert (r.status, (await r.json())["id"]) == (200, SPIFFE)
        token_body = {"name": "svc", "permissions": ["quotes.read"], "owner": SPIFFE}
        token_body["tenants"] = ["acme-prod"]
        async with http.post(f"{gw.admin_url}/v1/tokens", json=token_body, headers=admin) as r:
            secret = (await r.json())["secret"]
        quote_url = f"{gw.url}/policy/acme-prod/quotes/q1"
        for credential in (gw.jwt(SPIFFE), secret):
            bearer = {"Authorization": f"Bearer {credential}"}
            async with http.get(quote_url, headers=bearer) as r:
                assert r.status == 200, await r.text()
        upper = {"Authorization": f"Bearer {gw.jwt(SPIFFE.upper())}"}
        async with http.get(quote_url, headers=upper) as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "unknown_principal"
