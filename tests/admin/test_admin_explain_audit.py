"""POST /v1/explain (the gateway's decision on its current map, with reasons) and
GET /v1/audit (admin changes of the caller's account, newest first, paged)."""

from __future__ import annotations

from typing import Any

import pytest

from admin_world import BACKENDS, World

# -- explain ------------------------------------------------------------------------

PRINCIPAL_CASES = [
    pytest.param(
        {"principal": "carol", "method": "GET", "path": "/policy/acme-prod/quotes/q1"},
        {"decision": "allow", "reason": "allowed", "endpoint": "quotes.get", "tenant": "acme-prod"},
        id="allow",
    ),
    pytest.param(
        {"principal": "carol", "method": "GET", "path": "/policy/acme-prod/quotes/q1?x=1&y=/z"},
        {"decision": "allow", "endpoint": "quotes.get", "required": ["quotes.read"]},
        id="query-stripped",
    ),
    pytest.param(
        {"principal": "carol", "method": "get", "path": "/policy/acme-prod/quotes/q1"},
        {"decision": "deny", "reason": "unmapped_route"},
        id="method-is-case-sensitive-like-the-gateway",
    ),
    pytest.param(
        {"principal": "alice", "method": "POST", "path": "/policy/acme-prod/quotes"},
        {
            "decision": "deny",
            "reason": "missing_permission",
            "missing_permissions": ["quotes.write"],
            "required": ["quotes.write"],
        },
        id="missing-permission",
    ),
    pytest.param(
        {"principal": "carol", "method": "GET", "path": "/policy/acme-test/quotes/q1"},
        {
            "decision": "deny",
            "reason": "tenant_out_of_scope",
            "detail": "not_in_principal_scope; tenant is in shadow mode: the gateway forwards "
            "and records shadow_deny",
            "enforcement": "shadow",
        },
        id="out-of-scope-shadow",
    ),
    pytest.param(
        {"principal": "carol", "method": "GET", "path": "/policy/globex-prod/quotes/q1"},
        {"decision": "deny", "reason": "tenant_out_of_scope", "detail": "unknown_tenant"},
        id="other-account-tenant-looks-unknown",
    ),
    pytest.param(
        {
            "principal": "carol",
            "method": "GET",
            "path": "/claims",
            "headers": {"x-tenant": "acme-prod"},
        },
        {"decision": "deny", "reason": "missing_permission", "tenant": "acme-prod"},
        id="header-tenant",
    ),
    pytest.param(
        {"principal": "root", "method": "GET", "path": "/claims"},
        {"decision": "deny", "reason": "tenant_out_of_scope", "detail": "missing_tenant"},
        id="header-tenant-missing",
    ),
    pytest.param(
        {"principal": "carol", "method": "DELETE", "path": "/policy"},
        {"decision": "deny", "reason": "unmapped_route", "endpoint": None},
        id="unmapped",
    ),
    pytest.param(
        {"principal": "carol", "method": "GET", "path": "/health"},
        {"decision": "allow", "reason": "public", "endpoint": "health"},
        id="public",
    ),
    pytest.param(
        {"principal": "carol", "method": "GET", "path": "/policy/acme-prod/%2e%2e/quotes/q"},
        {"decision": "deny", "reason": "ambiguous_path"},
        id="ambiguous-path",
    ),
]


@pytest.mark.parametrize(("body", "expected"), PRINCIPAL_CASES)
async def test_explain_for_a_principal(
    world: World, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    """explain reports the gateway's decision and its reasons for a principal."""
    answer = await world.call("POST", "/v1/explain", json=body)
    assert answer.status == 200
    assert {key: answer.body[key] for key in expected} == expected


async def test_explain_for_a_token_is_capped_by_the_token(world: World) -> None:
    """A token's decision uses its own grants: carol's quotes.read token cannot write."""
    body = {"token": world.secrets["carol"], "method": "POST", "path": "/policy/acme-prod/quotes"}
    answer = await world.call("POST", "/v1/explain", json=body)
    assert answer.body["decision"] == "deny"
    assert answer.body["missing_permissions"] == ["quotes.write"]
    assert answer.body["token_id"] == world.token_ids["carol"]
    assert answer.body["principal"] == "carol"


async def test_explain_for_a_token_allows(world: World) -> None:
    """carol's token may read quotes on acme-prod."""
    body = {"token": world.secrets["carol"], "method": "GET", "path": "/policy/acme-prod/quotes/1"}
    answer = await world.call("POST", "/v1/explain", json=body)
    assert answer.body["decision"] == "allow"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("revoked", "revoked_token"), ("pgt_nonsense", "invalid_token"), ("eyJ.x.y", "invalid_token")],
    ids=["revoked", "unknown", "jwt-not-configured"],
)
async def test_explain_reports_401_reasons_as_a_deny(
    world: World, secret: str, reason: str
) -> None:
    """A token the gateway would refuse with 401 is a deny with the 401 reason."""
    if secret == "revoked":
        await world.call("DELETE", f"/v1/tokens/{world.token_ids['carol']}")
        secret = world.secrets["carol"]
    body = {"token": secret, "method": "GET", "path": "/policy/acme-prod/quotes/1"}
    answer = await world.call("POST", "/v1/explain", json=body)
    assert answer.status == 200
    assert (answer.body["decision"], answer.body["reason"]) == ("deny", reason)


async def test_explain_for_a_disabled_principal(world: World) -> None:
    """A disabled principal is a deny disabled_principal (the gateway's 401)."""
    await world.call("PATCH", "/v1/principals/carol", json={"disabled": True})
    body = {"principal": "carol", "method": "GET", "path": "/policy/acme-prod/quotes/1"}
    answer = await world.call("POST", "/v1/explain", json=body)
    assert (answer.body["decision"], answer.body["reason"]) == ("deny", "disabled_principal")


@pytest.mark.parametrize("key", ["principal", "token"])
async def test_explain_for_another_account_is_not_found(world: World, key: str) -> None:
    """Explaining a principal or token of another account is 404."""
    subject = "gadmin" if key == "principal" else world.secrets["gadmin"]
    body = {key: subject, "method": "GET", "path": "/health/x"}
    answer = await world.call("POST", "/v1/explain", json=body)
    assert answer.status == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"method": "GET", "path": "/x"}, "neither given"),
        ({"principal": "carol", "token": "t", "method": "GET", "path": "/x"}, "both given"),
        ({"principal": "carol", "path": "/x"}, "missing required field 'method'"),
        (
            {"principal": "carol", "method": "GET", "path": "/x", "headers": {"a": 1}},
            "body.headers.a",
        ),
    ],
    ids=["neither", "both", "no-method", "header-not-text"],
)
async def test_bad_explain_body_is_422(world: World, body: dict[str, Any], detail: str) -> None:
    """explain needs exactly one of principal and token, a method and a path."""
    answer = await world.call("POST", "/v1/explain", json=body)
    assert answer.status == 422
    assert detail in answer.body["detail"]


async def test_explain_sees_a_role_change_immediately(world: World) -> None:
    """After a role update through the API, explain gives the new decision."""
    body = {"principal": "carol", "method": "GET", "path": "/policy/acme-prod/quotes/q1"}
    assert (await world.call("POST", "/v1/explain", json=body)).body["decision"] == "allow"
    await world.call("PATCH", "/v1/roles/agent", json={"permissions": ["claims.read"]})
    assert (await world.call("POST", "/v1/explain", json=body)).body["decision"] == "deny"


# -- audit --------------------------------------------------------------------------


async def test_audit_is_newest_first_with_before_and_after(world: World) -> None:
    """Each change is an audit row with actor, action, target, before and after."""
    await world.call("POST", "/v1/tenants", json={"id": "acme-a"})
    await world.call("PUT", "/v1/tenants/acme-a/enforcement", json={"enforcement": "enforce"})
    await world.call("PATCH", "/v1/principals/bob", who="alice", json={"kind": "client"})
    items = (await world.call("GET", "/v1/audit?limit=2")).body["items"]
    assert [(i["action"], i["target"], i["actor"]) for i in items] == [
        ("principal.update", "bob", "principal:alice"),
        ("tenant.create", "acme-a", "principal:root"),
    ]
    assert items[0]["before"]["kind"] == "user"
    assert items[0]["after"]["kind"] == "client"
    assert items[0]["ts"].endswith("Z")
    assert items[0]["id"] > items[1]["id"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_audit_pages_through_everything_once(world: World) -> None:
    """Following next from page to page visits every row once, newest first, then stops."""
    for n in range(5):
        await world.call("POST", "/v1/tenants", json={"id": f"acme-p{n}"})
    seen: list[int] = []
    path = "/v1/audit?limit=4"
    while True:
        page = (await world.call("GET", path)).body
        seen += [item["id"] for item in page["items"]]
        if page["next"] is None:
            break
        assert page["next"] == seen[-1]
        path = f"/v1/audit?limit=4&before={page['next']}"
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen))
    everything = (await world.call("GET", "/v1/audit?limit=500")).body
    assert [item["id"] for item in everything["items"]] == seen
    assert everything["next"] is None


async def test_audit_is_the_callers_account_only(world: World) -> None:
    """globex's audit never shows acme's changes."""
    await world.call("POST", "/v1/tenants", json={"id": "acme-secret"})
    items = (await world.call("GET", "/v1/audit?limit=500", who="gadmin")).body["items"]
    assert items
    assert all("acme" not in str(item) for item in items)


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=501", "limit=ten", "before=-1", "before=x"],
    ids=["zero", "too-many", "text", "negative", "cursor-text"],
)
async def test_bad_audit_paging_is_422(world: World, query: str) -> None:
    """limit and before outside their ranges are a 422 naming the parameter."""
    answer = await world.call("GET", f"/v1/audit?{query}")
    assert answer.status == 422
    assert query.split("=")[0] in answer.body["detail"]
