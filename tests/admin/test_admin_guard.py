"""The admin API's guard: its own endpoint map, the gateway's authentication and
decide(), the admin API's error shapes, and changes enforced from the very next request."""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from admin_world import ClientFactory, World
from permgate.admin import ADMIN_MAP, create_admin_api
from permgate.core.endpoints import EndpointMap
from permgate.gateway.authn import Authenticator

# Every protected operation with its path parameters filled in.
PROTECTED = [
    pytest.param(method, re.sub(r"\{[^}]+\}", "x", e.path), e.permissions, id=e.id)
    for e in ADMIN_MAP.endpoints
    if not e.public
    for method in sorted(e.methods)
]


@pytest.mark.parametrize(("method", "path", "required"), PROTECTED)
async def test_every_operation_needs_credentials(
    world: World, method: str, path: str, required: tuple[str, ...]
) -> None:
    """Without credentials every protected operation answers 401 missing_credentials."""
    answer = await world.call(method, path, who=None, json={})
    assert answer.status == 401
    assert answer.body["error"] == "unauthenticated"
    assert answer.body["reason"] == "missing_credentials"
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="permgate"'


# (Self-service operations, e.g. one's own password, need authentication only.)
@pytest.mark.parametrize(("method", "path", "required"), [p for p in PROTECTED if p.values[2]])
async def test_every_operation_needs_its_permissions(
    world: World, method: str, path: str, required: tuple[str, ...]
) -> None:
    """A caller holding none of an operation's permissions gets 403 listing all of them."""
    answer = await world.call(method, path, who="carol", json={})
    assert answer.status == 403
    assert answer.body["error"] == "forbidden"
    assert answer.body["reason"] == "missing_permission"
    assert answer.body["missing_permissions"] == list(required)
    assert "carol" in answer.body["detail"]


async def test_unknown_token_is_invalid_token(world: World) -> None:
    """A credential that is no known token answers 401 invalid_token with the error challenge."""
    world.secrets["bogus"] = "pgt_bogus_not_a_token"
    answer = await world.call("GET", "/v1/tenants", who="bogus")
    assert answer.status == 401
    assert answer.body["reason"] == "invalid_token"
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="permgate", error="invalid_token"'
    assert set(answer.body) == {"error", "reason", "detail", "request_id"}


async def test_duplicate_authorization_header_is_refused(world: World) -> None:
    """Two Authorization headers are refused with 400, never resolved by picking one."""
    async with world.client.get(
        "/v1/tenants",
        headers=[
            ("Authorization", f"Bearer {world.secrets['carol']}"),
            ("Authorization", f"Bearer {world.secrets['root']}"),
        ],
    ) as response:
        body = await response.json()
    assert response.status == 400
    assert body["reason"] == "duplicate_header"


async def test_unknown_path_is_not_found(world: World) -> None:
    """A path the admin API does not serve answers 404 naming the request."""
    answer = await world.call("GET", "/v1/nothing-here")
    assert answer.status == 404
    assert answer.body["error"] == "not_found"
    assert "GET /v1/nothing-here" in answer.body["detail"]


async def test_wrong_method_is_405_with_allow(world: World) -> None:
    """A served path with an unserved method answers 405 and lists the allowed methods."""
    answer = await world.call("DELETE", "/v1/tenants")
    assert answer.status == 405
    assert answer.headers["Allow"] == "GET, POST"


async def test_token_is_capped_by_its_own_grants(world: World) -> None:
    """An admin's narrow token is refused what the token does not grant, naming the token."""
    answer = await world.call("GET", "/v1/tenants", who="root-narrow")
    assert answer.status == 403
    assert answer.body["missing_permissions"] == ["tenants.read"]
    assert world.token_ids["root-narrow"] in answer.body["detail"]
    assert "its owner does" in answer.body["detail"]


async def test_token_is_capped_by_its_owner_from_the_next_request(world: World) -> None:
    """A role taken from a token's owner through the API stops the token on the next call."""
    assert (await world.call("GET", "/v1/tenants", who="alice")).status == 200
    removed = await world.call("PUT", "/v1/principals/alice/roles", json=[])
    assert removed.status == 200
    answer = await world.call("GET", "/v1/tenants", who="alice")
    assert answer.status == 403
    assert answer.body["missing_permissions"] == ["tenants.read"]


async def test_request_id_is_kept_from_the_client(world: World) -> None:
    """A well-formed X-Request-Id comes back in the body and the header."""
    answer = await world.call("GET", "/v1/roles/nope", headers={"X-Request-Id": "req-42"})
    assert answer.status == 404
    assert answer.body["request_id"] == "req-42"
    assert answer.headers["X-Request-Id"] == "req-42"


async def test_unknown_query_parameter_is_refused(world: World) -> None:
    """A query parameter the operation does not take is a 422 naming it."""
    answer = await world.call("GET", "/v1/tenants?sort=id")
    assert answer.status == 422
    assert "'sort'" in answer.body["detail"]


async def test_every_write_is_delivered_before_the_answer(world: World) -> None:
    """on_committed runs once per successful write and not for a refused one."""
    before = world.committed
    assert (await world.call("POST", "/v1/tenants", json={"id": "acme-new"})).status == 201
    assert world.committed == before + 1
    assert (await world.call("POST", "/v1/tenants", json={"id": "acme-new"})).status == 409
    assert world.committed == before + 1


async def test_store_outage_is_503_without_the_store_location(world: World) -> None:
    """An unreachable store answers 503 store_unavailable, naming no file or host."""
    assert (await world.call("GET", "/v1/tenants")).status == 200
    await world.store.close()
    answer = await world.call("GET", "/v1/tenants")
    assert answer.status == 503
    assert answer.body["reason"] == "store_unavailable"
    assert "s.db" not in answer.body["detail"]


async def test_failed_delivery_resets_the_model(
    world: World, gateway_map: EndpointMap, aiohttp_client: ClientFactory
) -> None:
    """If on_committed fails, the write still succeeds and the cache is dropped, so a
    token revoked through the API is refused on the next request all the same."""

    async def broken() -> None:
        raise RuntimeError("delivery failed")

    api = create_admin_api(
        service=world.service,
        authenticator=Authenticator(world.model, token_prefix="pgt_", jwt=None),
        model=world.model,
        endpoint_map=lambda: gateway_map,
        on_committed=broken,
    )
    root = web.Application()
    root.add_subapp("/v1", api)
    world.client = await aiohttp_client(root)
    assert (await world.call("GET", "/v1/tenants", who="bob")).status == 200
    revoked = await world.call("DELETE", f"/v1/tokens/{world.token_ids['bob']}")
    assert revoked.status == 200
    refused = await world.call("GET", "/v1/tenants", who="bob")
    assert refused.body["reason"] == "revoked_token"
