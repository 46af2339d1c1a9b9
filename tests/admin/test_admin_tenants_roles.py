"""Tenants and roles through the admin API: every route, bad input that changes
nothing, the one-way enforcement switch, the admin-only role rules and account isolation."""

from __future__ import annotations

from typing import Any

import pytest

from admin_world import BACKENDS, World

# -- tenants ------------------------------------------------------------------------


async def test_tenants_list_is_the_callers_account(world: World) -> None:
    """The list holds the caller's tenants only, with the model's fields."""
    answer = await world.call("GET", "/v1/tenants")
    assert answer.status == 200
    assert answer.body["items"] == [
        {"id": "acme-prod", "account": "acme", "type": "PRODUCTION", "enforcement": "enforce"},
        {"id": "acme-test", "account": "acme", "type": "TEST", "enforcement": "shadow"},
    ]


async def test_tenant_create_then_read_back(world: World) -> None:
    """POST creates a tenant in the caller's account; GET reads it back."""
    created = await world.call(
        "POST", "/v1/tenants", json={"id": "acme-uat", "type": "TEST", "enforcement": "shadow"}
    )
    assert created.status == 201
    assert created.headers["Location"] == "/v1/tenants/acme-uat"
    read = await world.call("GET", "/v1/tenants/acme-uat")
    assert read.body == {
        "id": "acme-uat",
        "account": "acme",
        "type": "TEST",
        "enforcement": "shadow",
    }


async def test_tenant_create_takes_the_default_enforcement(world: World) -> None:
    """A tenant created without a mode gets the configured default (enforce)."""
    created = await world.call("POST", "/v1/tenants", json={"id": "acme-eu"})
    assert created.body["enforcement"] == "enforce"
    assert created.body["type"] == "PRODUCTION"


BAD_TENANT_BODIES = [
    pytest.param(b"{", "not valid JSON", id="malformed-json"),
    pytest.param(b"", "body is empty", id="empty-body"),
    pytest.param(b"[]", "body: expected an object, got an array", id="not-an-object"),
    pytest.param(b'{"id": 7}', "body.id: expected a string, got an integer (7)", id="wrong-type"),
    pytest.param(b'{"type": "TEST"}', "missing required field 'id'", id="missing-id"),
    pytest.param(b'{"id": "x-1", "colour": "red"}', "unknown field 'colour'", id="unknown-field"),
    pytest.param(
        b'{"id": "x-1", "account": "globex"}', "account comes from the authenticated", id="account"
    ),
    pytest.param(b'{"id": "x-1", "type": "STAGING"}', "'STAGING' is not one of", id="bad-type"),
    pytest.param(b'{"id": "bad id!"}', "tenant id 'bad id!' is invalid", id="bad-id"),
    pytest.param(b'{"id": "any"}', "reserved", id="reserved-id"),
]


@pytest.mark.parametrize(("raw", "detail"), BAD_TENANT_BODIES)
async def test_bad_tenant_body_is_422_and_changes_nothing(
    world: World, raw: bytes, detail: str
) -> None:
    """Each kind of bad input is a 422 whose detail says what is wrong; nothing is created."""
    before = await world.call("GET", "/v1/tenants")
    answer = await world.call("POST", "/v1/tenants", data=raw)
    assert answer.status == 422
    assert answer.body["error"] == "invalid"
    assert detail in answer.body["detail"]
    assert (await world.call("GET", "/v1/tenants")).body == before.body


async def test_bad_body_reports_every_problem(world: World) -> None:
    """All the problems of one body are named together, so one round trip fixes them."""
    answer = await world.call("POST", "/v1/tenants", json={"type": 3, "extra": 1})
    detail = answer.body["detail"]
    assert "body.type" in detail
    assert "'extra'" in detail
    assert "'id'" in detail


async def test_tenant_id_taken_is_409(world: World) -> None:
    """Creating a tenant whose id exists is a conflict."""
    answer = await world.call("POST", "/v1/tenants", json={"id": "acme-prod"})
    assert answer.status == 409
    assert answer.body["error"] == "conflict"
    assert "acme-prod" in answer.body["detail"]


async def test_another_accounts_tenant_is_not_found(world: World) -> None:
    """Another account's tenant answers exactly like a tenant that does not exist."""
    foreign = await world.call("GET", "/v1/tenants/globex-prod")
    missing = await world.call("GET", "/v1/tenants/nowhere")
    assert foreign.status == missing.status == 404
    assert foreign.body["detail"] == "tenant 'globex-prod' not found"
    assert missing.body["detail"] == "tenant 'nowhere' not found"


async def test_enforcement_switches_to_enforce(world: World) -> None:
    """PUT enforcement moves a shadow tenant to enforce."""
    answer = await world.call(
        "PUT", "/v1/tenants/acme-test/enforcement", json={"enforcement": "enforce"}
    )
    assert answer.status == 200
    assert answer.body["enforcement"] == "enforce"
    assert (await world.call("GET", "/v1/tenants/acme-test")).body["enforcement"] == "enforce"


async def test_enforcement_back_to_shadow_is_409_and_audited(world: World) -> None:
    """Switching back to shadow is refused with 409, stays enforce, and leaves an audit row."""
    answer = await world.call(
        "PUT", "/v1/tenants/acme-prod/enforcement", json={"enforcement": "shadow"}
    )
    assert answer.status == 409
    assert "one-way" in answer.body["detail"]
    assert (await world.call("GET", "/v1/tenants/acme-prod")).body["enforcement"] == "enforce"
    newest = (await world.call("GET", "/v1/audit?limit=1")).body["items"][0]
    assert (newest["action"], newest["target"]) == ("tenant.enforcement.refused", "acme-prod")
    assert newest["actor"] == "principal:root"


async def test_enforcement_of_another_accounts_tenant_is_404(world: World) -> None:
    """An admin of one account cannot switch another account's tenant; it stays as it was."""
    answer = await world.call(
        "PUT", "/v1/tenants/acme-test/enforcement", who="gadmin", json={"enforcement": "enforce"}
    )
    assert answer.status == 404
    assert (await world.call("GET", "/v1/tenants/acme-test")).body["enforcement"] == "shadow"


async def test_enforcement_body_is_validated(world: World) -> None:
    """An enforcement value outside shadow|enforce is a 422 naming it."""
    answer = await world.call(
        "PUT", "/v1/tenants/acme-test/enforcement", json={"enforcement": "strict"}
    )
    assert answer.status == 422
    assert "'strict'" in answer.body["detail"]


# -- roles --------------------------------------------------------------------------


async def test_roles_list_has_builtin_and_custom_roles(world: World) -> None:
    """The list shows every role of the account, built-in ones marked."""
    answer = await world.call("GET", "/v1/roles")
    names = {role["name"]: role["builtin"] for role in answer.body["items"]}
    assert names == {
        "admin": True,
        "read-only": True,
        "full-access": True,
        "claims-only": True,
        "ops": False,
        "agent": False,
    }


async def test_role_get(world: World) -> None:
    """GET a role returns its model fields."""
    answer = await world.call("GET", "/v1/roles/agent")
    assert answer.body == {
        "name": "agent",
        "display_name": "Agent",
        "permissions": ["quotes.*"],
        "builtin": False,
    }


async def test_another_accounts_role_is_not_found(world: World) -> None:
    """An acme role does not exist from globex."""
    answer = await world.call("GET", "/v1/roles/ops", who="gadmin")
    assert answer.status == 404


async def test_admin_creates_a_role(world: World) -> None:
    """An admin creates a role; it is then readable."""
    body = {"name": "underwriter", "display_name": "Underwriter", "permissions": ["policy.*"]}
    created = await world.call("POST", "/v1/roles", json=body)
    assert created.status == 201
    assert created.body == {**body, "builtin": False}
    assert (await world.call("GET", "/v1/roles/underwriter")).status == 200


ROLE_WRITES = [
    pytest.param(
        "POST", "/v1/roles", {"name": "x", "display_name": "X", "permissions": []}, id="create"
    ),
    pytest.param("PATCH", "/v1/roles/agent", {"permissions": ["quotes.read"]}, id="update"),
    pytest.param("DELETE", "/v1/roles/agent", None, id="delete"),
    pytest.param("PUT", "/v1/principals/carol/roles", [{"role": "ops"}], id="assign"),
    pytest.param(
        "POST", "/v1/principals", {"id": "zed", "roles": [{"role": "agent"}]}, id="create-with"
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), ROLE_WRITES)
async def test_non_admin_cannot_change_roles(
    world: World, method: str, path: str, body: Any
) -> None:
    """A principal with every permission but not the admin role gets 403 admin_required."""
    roles_before = (await world.call("GET", "/v1/roles")).body
    carol_before = (await world.call("GET", "/v1/principals/carol")).body
    answer = await world.call(method, path, who="frank", json=body)
    assert answer.status == 403
    assert answer.body["reason"] == "admin_required"
    assert "only admins" in answer.body["detail"]
    assert (await world.call("GET", "/v1/roles")).body == roles_before
    assert (await world.call("GET", "/v1/principals/carol")).body == carol_before
    assert (await world.call("GET", "/v1/principals/zed")).status == 404


async def test_invalid_permission_in_a_role_is_named(world: World) -> None:
    """A role with an invalid grant is a 422 naming the grant; no role is created."""
    body = {"name": "bad", "display_name": "Bad", "permissions": ["quotes.read", "*.write"]}
    answer = await world.call("POST", "/v1/roles", json=body)
    assert answer.status == 422
    assert "'*.write'" in answer.body["detail"]
    assert (await world.call("GET", "/v1/roles/bad")).status == 404


async def test_role_update_is_enforced_on_the_next_request(world: World) -> None:
    """Taking tenants.read out of a role stops its holders' next request."""
    permissions = [p for p in ("principals.read", "authTokens.read")]
    answer = await world.call("PATCH", "/v1/roles/ops", json={"permissions": permissions})
    assert answer.status == 200
    assert answer.body["permissions"] == permissions
    denied = await world.call("GET", "/v1/tenants", who="bob")
    assert denied.status == 403
    assert denied.body["missing_permissions"] == ["tenants.read"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "agents"), ("display_name", "Sales Agent")],
    ids=["name", "display_name"],
)
async def test_role_name_and_display_name_are_immutable(
    world: World, field: str, value: str
) -> None:
    """Renaming a role is a 422 saying the field cannot change; the role is untouched."""
    before = (await world.call("GET", "/v1/roles/agent")).body
    answer = await world.call(
        "PATCH", "/v1/roles/agent", json={field: value, "permissions": ["quotes.read"]}
    )
    assert answer.status == 422
    assert "cannot change after creation" in answer.body["detail"]
    assert (await world.call("GET", "/v1/roles/agent")).body == before


async def test_role_patch_needs_a_field(world: World) -> None:
    """An empty PATCH is a 422 saying there is nothing to change."""
    answer = await world.call("PATCH", "/v1/roles/agent", json={})
    assert answer.status == 422
    assert "nothing to change" in answer.body["detail"]


async def test_role_patch_rejects_builtin_flag(world: World) -> None:
    """builtin cannot be set by a client."""
    answer = await world.call("PATCH", "/v1/roles/agent", json={"builtin": True})
    assert answer.status == 422
    assert "'builtin'" in answer.body["detail"]


async def test_admin_role_keeps_everything(world: World) -> None:
    """The admin role's *.* cannot be edited away."""
    answer = await world.call("PATCH", "/v1/roles/admin", json={"permissions": ["quotes.read"]})
    assert answer.status == 422
    assert "*.*" in answer.body["detail"]


async def test_assigned_role_cannot_be_deleted(world: World) -> None:
    """Deleting an assigned role is a 409 listing who holds it; the role stays."""
    answer = await world.call("DELETE", "/v1/roles/ops")
    assert answer.status == 409
    assert answer.body["holders"] == ["alice", "bob"]
    assert "alice, bob" in answer.body["detail"]
    assert (await world.call("GET", "/v1/roles/ops")).status == 200


@pytest.mark.parametrize("name", ["admin", "read-only", "full-access", "claims-only"])
async def test_builtin_role_cannot_be_deleted(world: World, name: str) -> None:
    """Base and special roles are never deleted: 409, and the role stays."""
    answer = await world.call("DELETE", f"/v1/roles/{name}")
    assert answer.status == 409
    assert "base or special role" in answer.body["detail"]
    assert (await world.call("GET", f"/v1/roles/{name}")).status == 200


async def test_unassigned_role_is_deleted(world: World) -> None:
    """An unassigned custom role is deleted with 204 and is gone."""
    await world.call("PUT", "/v1/principals/carol/roles", json=[])
    answer = await world.call("DELETE", "/v1/roles/agent")
    assert answer.status == 204
    assert (await world.call("GET", "/v1/roles/agent")).status == 404


@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"permissions": ["quotes.read"]}), ("DELETE", None)],
    ids=["update", "delete"],
)
async def test_another_accounts_admin_cannot_touch_a_role(
    world: World, method: str, body: Any
) -> None:
    """globex's admin gets 404 for acme's role, which stays as it was."""
    before = (await world.call("GET", "/v1/roles/agent")).body
    answer = await world.call(method, "/v1/roles/agent", who="gadmin", json=body)
    assert answer.status == 404
    assert (await world.call("GET", "/v1/roles/agent")).body == before


@pytest.mark.parametrize("backend", BACKENDS)
async def test_roles_lifecycle_on_each_backend(world: World) -> None:
    """Create, update, refuse to delete while assigned, unassign, delete: on every backend."""
    body = {"name": "temp", "display_name": "Temp", "permissions": ["quotes.read"]}
    assert (await world.call("POST", "/v1/roles", json=body)).status == 201
    patch = {"permissions": ["quotes.*"]}
    assert (await world.call("PATCH", "/v1/roles/temp", json=patch)).status == 200
    assign = [{"role": "temp", "tenant": "acme-prod"}]
    assert (await world.call("PUT", "/v1/principals/carol/roles", json=assign)).status == 200
    assert (await world.call("DELETE", "/v1/roles/temp")).body["holders"] == ["carol"]
    assert (await world.call("PUT", "/v1/principals/carol/roles", json=[])).status == 200
    assert (await world.call("DELETE", "/v1/roles/temp")).status == 204
