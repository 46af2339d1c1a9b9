"""Principals and auth tokens through the admin API: every route, the admin-only
assignment rule, tokens never wider than their owner or the token that made them,
own-tokens-only for non-admins, and nothing across accounts."""

from __future__ import annotations

from typing import Any

import pytest

from admin_world import BACKENDS, World
from permgate.manage.service import Actor

# -- principals ---------------------------------------------------------------------


async def test_principals_list_is_the_callers_account(world: World) -> None:
    """The list holds the caller's account's principals only."""
    answer = await world.call("GET", "/v1/principals")
    ids = [p["id"] for p in answer.body["items"]]
    assert ids == ["alice", "bob", "carol", "frank", "root"]
    globex = await world.call("GET", "/v1/principals", who="gadmin")
    assert [p["id"] for p in globex.body["items"]] == ["gadmin", "gus"]


async def test_principal_get_has_the_model_fields(world: World) -> None:
    """GET a principal returns the model's fields."""
    answer = await world.call("GET", "/v1/principals/alice")
    assert answer.body == {
        "id": "alice",
        "account": "acme",
        "kind": "user",
        "roles": [{"role": "ops", "tenant": None}],
        "tenants": ["acme-prod"],
        "disabled": False,
        "sessions_valid_after": None,
    }


async def test_non_admin_creates_a_principal_without_roles(world: World) -> None:
    """principals.write suffices to create a principal that holds no role, with a
    tenant scope within the caller's own."""
    body = {"id": "svc-1", "kind": "client", "tenants": ["acme-prod"]}
    answer = await world.call("POST", "/v1/principals", who="alice", json=body)
    assert answer.status == 201
    assert answer.body["kind"] == "client"
    assert answer.body["tenants"] == ["acme-prod"]
    assert answer.body["roles"] == []


async def test_non_admin_cannot_create_a_principal_scoped_beyond_itself(world: World) -> None:
    """A non-admin cannot hand out tenants it does not reach itself at creation either
    (alice reaches acme-prod only): 403 naming the excess, and nothing is created."""
    body = {"id": "svc-2", "tenants": ["acme-prod", "type:test"]}
    answer = await world.call("POST", "/v1/principals", who="alice", json=body)
    assert answer.status == 403
    assert "type:test" in answer.body["detail"]
    assert (await world.call("GET", "/v1/principals/svc-2")).status == 404


async def test_admin_creates_a_principal_with_roles(world: World) -> None:
    """An admin may give roles at creation."""
    body = {"id": "dave", "roles": [{"role": "agent", "tenant": "acme-test"}], "tenants": []}
    answer = await world.call("POST", "/v1/principals", json=body)
    assert answer.status == 201
    assert answer.body["roles"] == [{"role": "agent", "tenant": "acme-test"}]


async def test_roles_at_creation_need_roles_write_in_the_token(world: World) -> None:
    """An admin's token without roles.write cannot create a principal with roles."""
    _, secret = await world.service.create_token(
        Actor.cli(), "root", "people", ["principals.write"], []
    )
    world.secrets["people"] = secret
    body = {"id": "erin", "roles": [{"role": "agent"}]}
    answer = await world.call("POST", "/v1/principals", who="people", json=body)
    assert answer.status == 403
    assert answer.body["missing_permissions"] == ["roles.write"]
    assert (await world.call("GET", "/v1/principals/erin")).status == 404


async def test_principal_id_taken_is_409(world: World) -> None:
    """Principal ids are unique in the deployment."""
    answer = await world.call("POST", "/v1/principals", json={"id": "alice"})
    assert answer.status == 409


BAD_PRINCIPAL_BODIES = [
    pytest.param({"id": "p1", "kind": "robot"}, "'robot' is not one of", id="bad-kind"),
    pytest.param({"id": "p1", "tenants": "any"}, "body.tenants: expected an array", id="scope-str"),
    pytest.param({"id": "p1", "tenants": ["globex-prod"]}, "'globex-prod'", id="foreign-tenant"),
    pytest.param({"id": "p1", "roles": [{"role": "nope"}]}, "role 'nope'", id="unknown-role"),
    pytest.param({"id": "p1", "roles": [{"rol": "ops"}]}, "unknown field 'rol'", id="typo"),
    pytest.param({"id": "p1", "disabled": "yes"}, "expected a boolean", id="disabled-str"),
    pytest.param({"id": "p1", "account": "globex"}, "account comes from", id="account"),
]


@pytest.mark.parametrize(("body", "detail"), BAD_PRINCIPAL_BODIES)
async def test_bad_principal_body_is_422_and_changes_nothing(
    world: World, body: dict[str, Any], detail: str
) -> None:
    """Each bad principal body is a 422 naming the problem; no principal is created."""
    answer = await world.call("POST", "/v1/principals", json=body)
    assert answer.status == 422
    assert detail in answer.body["detail"]
    assert (await world.call("GET", "/v1/principals/p1")).status == 404


async def test_disabling_a_principal_stops_its_tokens_on_the_next_request(world: World) -> None:
    """PATCH disabled: the principal's token answers 401 disabled_principal right away."""
    answer = await world.call("PATCH", "/v1/principals/bob", who="alice", json={"disabled": True})
    assert answer.status == 200
    assert answer.body["disabled"] is True
    refused = await world.call("GET", "/v1/tenants", who="bob")
    assert refused.status == 401
    assert refused.body["reason"] == "disabled_principal"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"id": "robert"}, "unknown field 'id'"),
        ({"roles": []}, "unknown field 'roles'"),
        ({"sessions_valid_after": None}, "set by permgate"),
        ({}, "nothing to change"),
    ],
    ids=["id", "roles", "sessions", "empty"],
)
async def test_bad_principal_patch_is_422(world: World, body: dict[str, Any], detail: str) -> None:
    """PATCH takes kind and disabled only; anything else is named and nothing changes."""
    before = (await world.call("GET", "/v1/principals/bob")).body
    answer = await world.call("PATCH", "/v1/principals/bob", json=body)
    assert answer.status == 422
    assert detail in answer.body["detail"]
    assert (await world.call("GET", "/v1/principals/bob")).body == before


async def test_assigning_roles_is_admin_only(world: World) -> None:
    """A non-admin with principals.write cannot assign roles, not even to itself."""
    answer = await world.call(
        "PUT", "/v1/principals/alice/roles", who="alice", json=[{"role": "admin"}]
    )
    assert answer.status == 403
    assert answer.body["missing_permissions"] == ["roles.write"]
    frank = await world.call(
        "PUT", "/v1/principals/frank/roles", who="frank", json=[{"role": "admin"}]
    )
    assert frank.body["reason"] == "admin_required"
    roles = (await world.call("GET", "/v1/principals/frank")).body["roles"]
    assert roles == [{"role": "full-access", "tenant": None}]


async def test_removing_a_role_logs_the_principal_out(world: World) -> None:
    """Replacing roles with fewer sets sessions_valid_after (older JWTs stop working)."""
    answer = await world.call("PUT", "/v1/principals/carol/roles", json=[])
    assert answer.status == 200
    assert answer.body["roles"] == []
    assert answer.body["sessions_valid_after"] is not None


async def test_assignment_to_another_accounts_tenant_is_422(world: World) -> None:
    """A role on a tenant of another account is refused, naming the tenant."""
    answer = await world.call(
        "PUT", "/v1/principals/carol/roles", json=[{"role": "agent", "tenant": "globex-prod"}]
    )
    assert answer.status == 422
    assert "'globex-prod'" in answer.body["detail"]


async def test_tenant_scope_is_replaced(world: World) -> None:
    """PUT tenants replaces the scope."""
    answer = await world.call(
        "PUT", "/v1/principals/carol/tenants", who="root", json=["acme-prod", "type:test"]
    )
    assert answer.status == 200
    assert answer.body["tenants"] == ["acme-prod", "type:test"]


async def test_scope_beyond_the_callers_own_is_403(world: World) -> None:
    """A non-admin cannot hand out tenants it does not reach itself."""
    answer = await world.call(
        "PUT", "/v1/principals/carol/tenants", who="alice", json=["acme-prod", "type:test"]
    )
    assert answer.status == 403
    assert "type:test" in answer.body["detail"]
    assert (await world.call("GET", "/v1/principals/carol")).body["tenants"] == ["acme-prod"]


async def test_bad_tenant_scope_is_422(world: World) -> None:
    """A scope item that is neither a keyword nor a tenant of the account is named."""
    answer = await world.call("PUT", "/v1/principals/carol/tenants", json=["acme-prod", "every"])
    assert answer.status == 422
    assert "'every'" in answer.body["detail"]
    assert (await world.call("GET", "/v1/principals/carol")).body["tenants"] == ["acme-prod"]


PRINCIPAL_OPERATIONS = [
    pytest.param("GET", "/v1/principals/alice", None, id="get"),
    pytest.param("PATCH", "/v1/principals/alice", {"disabled": True}, id="update"),
    pytest.param("PUT", "/v1/principals/alice/roles", [], id="roles"),
    pytest.param("PUT", "/v1/principals/alice/tenants", ["any"], id="tenants"),
]


@pytest.mark.parametrize(("method", "path", "body"), PRINCIPAL_OPERATIONS)
async def test_another_accounts_principal_is_not_found(
    world: World, method: str, path: str, body: Any
) -> None:
    """globex's admin gets 404 for every operation on an acme principal; nothing changes."""
    before = (await world.call("GET", "/v1/principals/alice")).body
    answer = await world.call(method, path, who="gadmin", json=body)
    assert answer.status == 404
    assert answer.body["detail"] == "principal 'alice' not found"
    assert (await world.call("GET", "/v1/principals/alice")).body == before


# -- tokens -------------------------------------------------------------------------


async def test_principal_creates_its_own_token_and_uses_it(world: World) -> None:
    """POST /v1/tokens returns the secret once; the secret works; listings never show it."""
    body = {"name": "ci", "permissions": ["tenants.read"], "tenants": [], "expires_in": 3600}
    created = await world.call("POST", "/v1/tokens", who="alice", json=body)
    assert created.status == 201
    assert created.body["owner"] == "alice"
    assert created.body["secret"].startswith("pgt_")
    assert created.body["expires_at"] is not None
    assert "secret_hash" not in created.body
    world.secrets["ci"] = created.body["secret"]
    assert (await world.call("GET", "/v1/tenants", who="ci")).status == 200
    listed = (await world.call("GET", "/v1/tokens", who="alice")).body["items"]
    assert created.body["id"] in [t["id"] for t in listed]
    assert all("secret" not in t and "secret_hash" not in t for t in listed)


async def test_token_wider_than_its_owner_is_422_listing_the_excess(world: World) -> None:
    """Grants and tenants beyond the owner are all listed; no token is created."""
    before = (await world.call("GET", "/v1/tokens", who="alice")).body
    body = {"name": "wide", "permissions": ["tenants.read", "roles.write"], "tenants": ["any"]}
    answer = await world.call("POST", "/v1/tokens", who="alice", json=body)
    assert answer.status == 422
    assert "roles.write" in answer.body["detail"]
    assert "any" in answer.body["detail"]
    assert "tenants.read" not in answer.body["detail"]
    assert (await world.call("GET", "/v1/tokens", who="alice")).body == before


async def test_token_wider_than_the_calling_token_is_422(world: World) -> None:
    """A narrow token cannot mint a token with its owner's fuller power."""
    _, secret = await world.service.create_token(
        Actor.cli(), "root", "minter", ["authTokens.write"], []
    )
    world.secrets["minter"] = secret
    body = {"name": "escalate", "permissions": ["*.*"], "tenants": ["any"]}
    answer = await world.call("POST", "/v1/tokens", who="minter", json=body)
    assert answer.status == 422
    assert "*.*" in answer.body["detail"]
    assert "used for this call" in answer.body["detail"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": "t", "permissions": ["a.b"], "expires_in": 0}, "greater than 0"),
        ({"name": "t", "permissions": ["a.b"], "expires_in": "1h"}, "expected a number"),
        ({"name": "t", "permissions": []}, "at least one permission"),
        ({"name": "t", "permissions": ["tenants."]}, "'tenants.'"),
        ({"permissions": ["tenants.read"]}, "missing required field 'name'"),
        ({"name": "t", "permissions": ["tenants.read"], "secret": "x"}, "generated by permgate"),
    ],
    ids=["expires-zero", "expires-text", "no-permission", "bad-permission", "no-name", "secret"],
)
async def test_bad_token_body_is_422(world: World, body: dict[str, Any], detail: str) -> None:
    """Each bad token body is a 422 naming the problem."""
    answer = await world.call("POST", "/v1/tokens", who="alice", json=body)
    assert answer.status == 422
    assert detail in answer.body["detail"]


async def test_non_admin_cannot_create_a_token_for_another(world: World) -> None:
    """alice cannot mint a token owned by bob (403 not_token_owner); root can."""
    body = {"name": "for-bob", "permissions": ["tenants.read"], "owner": "bob"}
    refused = await world.call("POST", "/v1/tokens", who="alice", json=body)
    assert refused.status == 403
    assert refused.body["reason"] == "not_token_owner"
    allowed = await world.call("POST", "/v1/tokens", json=body)
    assert allowed.status == 201
    assert allowed.body["owner"] == "bob"


async def test_token_for_another_accounts_principal_is_404(world: World) -> None:
    """An admin cannot mint a token for a principal of another account."""
    body = {"name": "x", "permissions": ["tenants.read"], "owner": "gus"}
    answer = await world.call("POST", "/v1/tokens", json=body)
    assert answer.status == 404


async def test_token_listing_scope(world: World) -> None:
    """A principal lists its own tokens; an admin the whole account's; never another's."""
    mine = (await world.call("GET", "/v1/tokens", who="alice")).body["items"]
    assert {t["owner"] for t in mine} == {"alice"}
    everyone = (await world.call("GET", "/v1/tokens")).body["items"]
    assert {t["owner"] for t in everyone} == {"root", "alice", "bob", "carol", "frank"}
    bobs = (await world.call("GET", "/v1/tokens?owner=bob")).body["items"]
    assert {t["owner"] for t in bobs} == {"bob"}


async def test_non_admin_cannot_list_anothers_tokens(world: World) -> None:
    """alice asking for bob's tokens gets 403 not_token_owner."""
    answer = await world.call("GET", "/v1/tokens?owner=bob", who="alice")
    assert answer.status == 403
    assert answer.body["reason"] == "not_token_owner"


async def test_listing_another_accounts_tokens_is_404(world: World) -> None:
    """An admin asking for another account's principal's tokens gets 404."""
    answer = await world.call("GET", "/v1/tokens?owner=gadmin")
    assert answer.status == 404


async def test_revoked_token_is_refused_on_the_next_request(world: World) -> None:
    """DELETE /v1/tokens/{id} on one's own token: the next call with it is 401 revoked_token."""
    token_id = world.token_ids["alice"]
    answer = await world.call("DELETE", f"/v1/tokens/{token_id}", who="alice")
    assert answer.status == 200
    assert answer.body["revoked_at"] is not None
    refused = await world.call("GET", "/v1/tenants", who="alice")
    assert refused.status == 401
    assert refused.body["reason"] == "revoked_token"


async def test_non_admin_cannot_revoke_anothers_token(world: World) -> None:
    """alice cannot revoke bob's token (403 not_token_owner), which keeps working."""
    answer = await world.call("DELETE", f"/v1/tokens/{world.token_ids['bob']}", who="alice")
    assert answer.status == 403
    assert answer.body["reason"] == "not_token_owner"
    assert (await world.call("GET", "/v1/tenants", who="bob")).status == 200


async def test_admin_revokes_anyones_token_in_its_account(world: World) -> None:
    """root revokes bob's token."""
    answer = await world.call("DELETE", f"/v1/tokens/{world.token_ids['bob']}")
    assert answer.status == 200
    assert (await world.call("GET", "/v1/tenants", who="bob")).body["reason"] == "revoked_token"


async def test_another_accounts_token_cannot_be_revoked(world: World) -> None:
    """globex's admin gets 404 for an acme token, which keeps working."""
    answer = await world.call("DELETE", f"/v1/tokens/{world.token_ids['alice']}", who="gadmin")
    assert answer.status == 404
    assert answer.body["detail"] == f"token {world.token_ids['alice']!r} not found"
    assert (await world.call("GET", "/v1/tenants", who="alice")).status == 200


@pytest.mark.parametrize("backend", BACKENDS)
async def test_token_lifecycle_on_each_backend(world: World) -> None:
    """Create, use, list, revoke, refused: on every backend."""
    body = {"name": "b", "permissions": ["principals.read"]}
    created = await world.call("POST", "/v1/tokens", who="bob", json=body)
    world.secrets["b"] = created.body["secret"]
    assert (await world.call("GET", "/v1/principals", who="b")).status == 200
    assert (await world.call("DELETE", f"/v1/tokens/{created.body['id']}", who="b")).status == 403
    assert (await world.call("DELETE", f"/v1/tokens/{created.body['id']}", who="bob")).status == 200
    assert (await world.call("GET", "/v1/principals", who="b")).body["reason"] == "revoked_token"
