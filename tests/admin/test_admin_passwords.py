"""Passwords through the admin API: ``PUT /v1/principals/{id}/password`` (one's own,
another's, refusals naming every broken rule, sessions ended) and
``GET /v1/password-policy``, on both stores, never answering with a password or hash."""

from __future__ import annotations

import orjson
import pytest

from admin_world import BACKENDS, World
from permgate.core.passwords import Lockout, PasswordPolicy
from permgate.manage.service import Actor, LoginRefused

CLI = Actor.cli()
GOOD = "correct horse battery staple"
OTHER = "purple monkey dishwasher 42"


async def _put(world: World, target: str, who: str | None, body: object) -> tuple[int, object]:
    answer = await world.call("PUT", f"/v1/principals/{target}/password", who=who, json=body)
    return answer.status, answer.body


@pytest.mark.parametrize("backend", BACKENDS)
async def test_admin_sets_a_password(world: World) -> None:
    """An admin sets another principal's password: 204, no body, the principal can
    sign in with it, and its older sessions end (sessions_valid_after set)."""
    status, body = await _put(world, "carol", "root", {"password": GOOD})
    assert (status, body) == (204, None)
    principal = await world.service.verify_login("carol", GOOD, client_ip="127.0.0.1")
    assert principal.sessions_valid_after is not None
    shown = await world.call("GET", "/v1/principals/carol")
    assert shown.body["sessions_valid_after"] is not None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refused_password_names_every_rule(world: World) -> None:
    """A refused password is 422 naming every rule it breaks, without echoing it."""
    await world.service.set_password_policy(
        CLI, "acme", PasswordPolicy(min_length=12, require_classes=("digit",))
    )
    status, body = await _put(world, "carol", "root", {"password": "password"})
    assert status == 422
    assert isinstance(body, dict) and body["error"] == "invalid"
    detail = body["detail"]
    assert "shorter than 12 characters" in detail
    assert "common and breached" in detail
    assert "digit" in detail
    assert "'password'" not in detail


REFUSED_BODIES = [
    pytest.param({"password": "Carol"}, "it is the principal's id", id="equals-id"),
    pytest.param({"password": "x" * 129}, "longer than 128", id="too-long"),
    pytest.param({"password": 12345678}, "expected a string, got an integer", id="not-text"),
    pytest.param({}, "missing required field 'password'", id="missing"),
    pytest.param({"password": GOOD, "hash": "x"}, "unknown field 'hash'", id="extra-field"),
]


@pytest.mark.parametrize(("body", "words"), REFUSED_BODIES)
async def test_refused_bodies(world: World, body: object, words: str) -> None:
    """Bad bodies are 422 saying what is wrong, never showing the value sent."""
    status, answer = await _put(world, "carol", "root", body)
    assert status == 422
    assert isinstance(answer, dict) and words in answer["detail"]
    assert "12345678" not in answer["detail"]


async def test_own_password_needs_current(world: World) -> None:
    """Changing one's own password (no permission needed) requires the current one
    once one is set; the wrong one is 403."""
    assert (await _put(world, "carol", "root", {"password": GOOD}))[0] == 204
    status, body = await _put(world, "carol", "carol", {"password": OTHER})
    assert status == 403 and "current_password is required" in str(body)
    status, _ = await _put(
        world, "carol", "carol", {"password": OTHER, "current_password": "not it at all"}
    )
    assert status == 403
    status, _ = await _put(world, "carol", "carol", {"password": OTHER, "current_password": GOOD})
    assert status == 204
    await world.service.verify_login("carol", OTHER, client_ip=None)


async def test_token_cannot_set_its_owners_first_password(world: World) -> None:
    """A token lacking principals.write cannot set its owner's first password (that
    would sign in with the owner's full power): 403 naming the missing permission."""
    status, body = await _put(world, "carol", "carol", {"password": GOOD})
    assert status == 403
    assert isinstance(body, dict) and body["missing_permissions"] == ["principals.write"]
    assert "first password" in body["detail"]


async def test_others_password_needs_principals_write(world: World) -> None:
    """Setting another principal's password needs principals.write: 403 without it."""
    status, body = await _put(world, "frank", "carol", {"password": GOOD})
    assert status == 403
    assert isinstance(body, dict) and body["missing_permissions"] == ["principals.write"]


async def test_principals_write_holder_cannot_take_over_stronger(world: World) -> None:
    """A principals.write holder (alice, ops) cannot set the password of a principal
    holding more than it does (frank, full-access), nor of an admin."""
    status, body = await _put(world, "frank", "alice", {"password": GOOD})
    assert status == 403 and "permissions you do not hold" in str(body)
    status, body = await _put(world, "root", "alice", {"password": GOOD})
    assert status == 403 and "only admins" in str(body)


async def test_principals_write_holder_sets_weaker_password(world: World) -> None:
    """A principals.write holder sets the password of a principal within its own power."""
    await world.service.set_principal_roles(CLI, "carol", [])
    assert (await _put(world, "carol", "alice", {"password": GOOD}))[0] == 204


async def test_other_account_is_not_found(world: World) -> None:
    """Another account's principal answers 404, as if it did not exist."""
    status, _ = await _put(world, "gus", "root", {"password": GOOD})
    assert status == 404


@pytest.mark.parametrize("backend", BACKENDS)
async def test_policy_floor_by_default(world: World) -> None:
    """Without a configured policy the route returns the floor under the policy keys."""
    answer = await world.call("GET", "/v1/password-policy", who="carol")
    assert answer.status == 200
    assert answer.body == {
        "min_length": 8,
        "max_length": 128,
        "require_classes": [],
        "history": 0,
        "max_age_days": None,
        "lockout": {"attempts": 10, "window_seconds": 900, "lock_seconds": 900},
    }


async def test_policy_is_the_callers_account(world: World) -> None:
    """The route returns the caller's own account's configured policy."""
    policy = PasswordPolicy(
        min_length=14, history=5, max_age_days=180, lockout=Lockout(5, 300, 600)
    )
    await world.service.set_password_policy(CLI, "acme", policy)
    acme = await world.call("GET", "/v1/password-policy", who="carol")
    assert acme.body["min_length"] == 14 and acme.body["history"] == 5
    assert acme.body["lockout"] == {"attempts": 5, "window_seconds": 300, "lock_seconds": 600}
    globex = await world.call("GET", "/v1/password-policy", who="gadmin")
    assert globex.body["min_length"] == 8


async def test_hashes_never_answered(world: World) -> None:
    """No admin API answer (principals, audit) holds a password or its hash."""
    await _put(world, "carol", "root", {"password": GOOD})
    with pytest.raises(LoginRefused):
        await world.service.verify_login("carol", OTHER, client_ip="127.0.0.1")
    seen = b""
    for path in ("/v1/principals", "/v1/principals/carol", "/v1/audit?limit=500"):
        answer = await world.call("GET", path)
        seen += orjson.dumps(answer.body)
    assert b"argon2" not in seen and GOOD.encode() not in seen and OTHER.encode() not in seen
    assert b"principal.password" in seen and b"auth.login" in seen


async def test_openapi_describes_both_routes(world: World) -> None:
    """The OpenAPI document lists both routes, the body schema and the policy shape."""
    document = (await world.call("GET", "/v1/openapi.json", who=None)).body
    put = document["paths"]["/v1/principals/{id}/password"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PasswordPut"
    }
    assert "204" in put["responses"] and "422" in put["responses"]
    get = document["paths"]["/v1/password-policy"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PasswordPolicy"
    }
    schemas = document["components"]["schemas"]
    assert schemas["PasswordPut"]["properties"]["password"]["writeOnly"] is True
    assert set(schemas["PasswordPolicy"]["required"]) == {
        "min_length",
        "max_length",
        "require_classes",
        "history",
        "max_age_days",
        "lockout",
    }


async def test_self_service_routes_need_authentication_only(world: World) -> None:
    """Both routes answer 401 without credentials and need no permission with them."""
    assert (await world.call("GET", "/v1/password-policy", who=None)).status == 401
    assert (await _put(world, "carol", None, {"password": GOOD}))[0] == 401
    assert (await world.call("GET", "/v1/password-policy", who="carol")).status == 200
