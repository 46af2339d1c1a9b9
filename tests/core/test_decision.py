"""The decision, rule by rule: route, public, authenticate, tenant, permissions; the
special roles; tenant scope keywords; the union of roles."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from permgate.core.decision import (
    Reason,
    ScopeDetail,
    Subject,
    decide,
    resolve_tenant_id,
    scope_beyond,
)
from permgate.core.endpoints import Endpoint, EndpointMap, TenantSource
from permgate.core.model import AuthToken, Principal, Role, RoleAssignment, Tenant
from permgate.core.roles import builtin_roles

BY_PATH = TenantSource("path_param", "tenantLocator")


def ep(
    id: str,
    path: str,
    permissions: tuple[str, ...] = (),
    *,
    method: str = "GET",
    any_of: tuple[str, ...] = (),
    tenant: TenantSource = BY_PATH,
    public: bool = False,
) -> Endpoint:
    return Endpoint(id, frozenset({method}), path, permissions, any_of, tenant, public)


ENDPOINTS = (
    ep("quotes.create", "/policy/{tenantLocator}/quotes", ("quotes.write",), method="POST"),
    ep("quotes.get", "/policy/{tenantLocator}/quotes/{locator}", ("quotes.read",)),
    ep(
        "quotes.issue",
        "/policy/{tenantLocator}/quotes/{locator}/issue",
        ("quotes.read", "policies.write"),
        method="POST",
    ),
    ep(
        "quotes.price",
        "/policy/{tenantLocator}/quotes/{locator}/price",
        any_of=("quotes.write", "quotes.price"),
        method="POST",
    ),
    ep("search", "/search/{tenantLocator}/search", ("search.read",), method="POST"),
    ep("contacts", "/policy/{tenantLocator}/contacts", ("contacts.write",)),
    ep("schedules", "/policy/{tenantLocator}/schedules", ("quote-schedules.schedule-read",)),
    ep("fnols.create", "/claims/{tenantLocator}/fnols", ("fnols.write",), method="POST"),
    ep(
        "tokens.create",
        "/auth/tokens",
        ("authTokens.write",),
        method="POST",
        tenant=TenantSource("none"),
    ),
    ep("whoami", "/auth/whoami", tenant=TenantSource("none")),
    ep("tenant.ping", "/policy/{tenantLocator}/ping"),
    ep("health", "/health", public=True, tenant=TenantSource("none")),
    ep("by-header", "/legacy/quotes", ("quote.fetch",), tenant=TenantSource("header", "X-Tenant")),
    ep("by-claim", "/cc/quotes", ("quote.fetch",), tenant=TenantSource("claim", "tenant")),
)
MAP = EndpointMap(endpoints=ENDPOINTS, default_tenant=BY_PATH)

TENANTS = {
    t.id: t
    for t in (
        Tenant("acme-prod", "acme", "PRODUCTION"),
        Tenant("acme-test", "acme", "TEST"),
        Tenant("acme-test2", "acme", "TEST"),
        Tenant("globex-prod", "globex", "PRODUCTION"),
    )
}
ROLES = {r.name: r for r in builtin_roles("acme")} | {
    "sales-agent": Role("acme", "sales-agent", "Sales Agent", ("quotes.read", "quotes.write")),
    "pricer": Role("acme", "pricer", "Pricer", ("quotes.price",)),
    "issuer": Role("acme", "issuer", "Issuer", ("policies.write",)),
    "reader": Role("acme", "reader", "Reader", ("quotes.read",)),
    "legacy": Role("acme", "legacy", "Legacy", ("quote.fetch",)),
}


def who(*roles: str | tuple[str, str], tenants: tuple[str, ...] = ("acme-prod",)) -> Principal:
    assignments = tuple(
        RoleAssignment(r) if isinstance(r, str) else RoleAssignment(r[0], r[1]) for r in roles
    )
    return Principal("alice", "acme", "user", assignments, tenants)


def token(grants: tuple[str, ...], tenants: tuple[str, ...] = ("any",)) -> AuthToken:
    return AuthToken("t1", "alice", "acme", "ci", grants, tenants)


@dataclass(frozen=True)
class Case:
    rule: str
    principal: Principal | None
    method: str
    path: str
    allowed: bool
    reason: Reason
    missing: tuple[str, ...] = ()
    token: AuthToken | None = None
    headers: tuple[tuple[str, str], ...] = ()
    claims: tuple[tuple[str, str], ...] = ()


CASES = [
    Case(
        "no entry matches: deny unmapped_route",
        who("sales-agent"),
        "GET",
        "/nope",
        False,
        Reason.UNMAPPED_ROUTE,
    ),
    Case(
        "method not in the entry: unmapped",
        who("sales-agent"),
        "DELETE",
        "/policy/acme-prod/quotes/q1",
        False,
        Reason.UNMAPPED_ROUTE,
    ),
    Case("public endpoints need no authentication", None, "GET", "/health", True, Reason.PUBLIC),
    Case(
        "everything else needs an authenticated subject",
        None,
        "GET",
        "/policy/acme-prod/quotes/q1",
        False,
        Reason.UNAUTHENTICATED,
    ),
    Case(
        "a tenant outside the scope is denied",
        who("sales-agent"),
        "GET",
        "/policy/acme-test/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "an unknown tenant gets the same answer",
        who("sales-agent"),
        "GET",
        "/policy/ghost/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "another account's tenant is never in scope",
        who("sales-agent", tenants=("any",)),
        "GET",
        "/policy/globex-prod/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "scope 'any' reaches every tenant of the account",
        who("sales-agent", tenants=("any",)),
        "GET",
        "/policy/acme-test/quotes/q1",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "scope 'type:test' reaches TEST tenants",
        who("sales-agent", tenants=("type:test",)),
        "GET",
        "/policy/acme-test2/quotes/q1",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "scope 'type:test' does not reach PRODUCTION",
        who("sales-agent", tenants=("type:test",)),
        "GET",
        "/policy/acme-prod/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "admin has implicit access to every tenant of its account",
        who("admin", tenants=()),
        "POST",
        "/policy/acme-test/quotes/q1/issue",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "admin never reaches another account",
        who("admin", tenants=()),
        "GET",
        "/policy/globex-prod/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "tenant is checked before permissions",
        who(tenants=()),
        "GET",
        "/policy/acme-prod/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "a missing permission is denied and named",
        who("reader"),
        "POST",
        "/policy/acme-prod/quotes",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.write",),
    ),
    Case(
        "every listed permission is required (all-of)",
        who("reader"),
        "POST",
        "/policy/acme-prod/quotes/q1/issue",
        False,
        Reason.MISSING_PERMISSION,
        ("policies.write",),
    ),
    Case(
        "the union of roles covers an all-of endpoint",
        who("reader", "issuer"),
        "POST",
        "/policy/acme-prod/quotes/q1/issue",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "any_of needs one of its permissions",
        who("pricer"),
        "POST",
        "/policy/acme-prod/quotes/q1/price",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "any_of with none held names all options",
        who("reader"),
        "POST",
        "/policy/acme-prod/quotes/q1/price",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.write", "quotes.price"),
    ),
    Case(
        "read-only grants read actions even on POST",
        who("read-only"),
        "POST",
        "/search/acme-prod/search",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "read-only is by permission, not method: a GET needing write is denied",
        who("read-only"),
        "GET",
        "/policy/acme-prod/contacts",
        False,
        Reason.MISSING_PERMISSION,
        ("contacts.write",),
    ),
    Case(
        "read-only covers schedule-read",
        who("read-only"),
        "GET",
        "/policy/acme-prod/schedules",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "claims-only reads and handles claims",
        who("claims-only"),
        "POST",
        "/claims/acme-prod/fnols",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "claims-only cannot write quotes",
        who("claims-only"),
        "POST",
        "/policy/acme-prod/quotes",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.write",),
    ),
    Case(
        "full-access grants everything on tenants in scope",
        who("full-access"),
        "POST",
        "/policy/acme-prod/quotes/q1/issue",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "full-access has no admin tenant powers",
        who("full-access"),
        "GET",
        "/policy/acme-test/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "a role held on one tenant applies there",
        who(("sales-agent", "acme-test"), tenants=("any",)),
        "POST",
        "/policy/acme-test/quotes",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "a role held on one tenant does not apply on another",
        who(("sales-agent", "acme-test"), tenants=("any",)),
        "POST",
        "/policy/acme-prod/quotes",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.write",),
    ),
    Case(
        "an endpoint with no permissions needs authentication and scope only",
        who(),
        "GET",
        "/policy/acme-prod/ping",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "an endpoint with no permissions still checks the tenant",
        who(),
        "GET",
        "/policy/acme-test/ping",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "tenant-less endpoints use account-wide roles",
        who("full-access", tenants=()),
        "POST",
        "/auth/tokens",
        True,
        Reason.ALLOWED,
    ),
    Case(
        "tenant-less endpoints ignore roles held on one tenant",
        who(("full-access", "acme-prod")),
        "POST",
        "/auth/tokens",
        False,
        Reason.MISSING_PERMISSION,
        ("authTokens.write",),
    ),
    Case(
        "a token is capped by its owner's current grants",
        who("reader"),
        "POST",
        "/policy/acme-prod/quotes",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.write",),
        token=token(("quotes.*",)),
    ),
    Case(
        "a token is capped by its own grants",
        who("sales-agent"),
        "POST",
        "/policy/acme-prod/quotes",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.write",),
        token=token(("quotes.read",)),
    ),
    Case(
        "a token within both is allowed",
        who("sales-agent"),
        "POST",
        "/policy/acme-prod/quotes",
        True,
        Reason.ALLOWED,
        token=token(("quotes.write",)),
    ),
    Case(
        "a token has no read rule of its own",
        who("read-only"),
        "GET",
        "/policy/acme-prod/quotes/q1",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.read",),
        token=token(("quotes.write",)),
    ),
    Case(
        "a token's tenant scope narrows the owner's",
        who("sales-agent", tenants=("any",)),
        "GET",
        "/policy/acme-test/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
        token=token(("quotes.read",), ("acme-prod",)),
    ),
    Case(
        "a token's wider tenant scope never widens the owner's",
        who("sales-agent"),
        "GET",
        "/policy/acme-test/quotes/q1",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
        token=token(("quotes.read",), ("any",)),
    ),
    Case(
        "an admin's *.* token works on any tenant of the account",
        who("admin", tenants=()),
        "POST",
        "/policy/acme-test/quotes/q1/issue",
        True,
        Reason.ALLOWED,
        token=token(("*.*",), ("any",)),
    ),
    Case(
        "a token that is not the principal's own grants nothing",
        who("sales-agent"),
        "GET",
        "/policy/acme-prod/quotes/q1",
        False,
        Reason.MISSING_PERMISSION,
        ("quotes.read",),
        token=replace(token(("quotes.read",)), owner="mallory"),
    ),
    Case(
        "the tenant may come from a header",
        who("legacy"),
        "GET",
        "/legacy/quotes",
        True,
        Reason.ALLOWED,
        headers=(("X-Tenant", "acme-prod"),),
    ),
    Case(
        "a missing tenant header is out of scope",
        who("legacy"),
        "GET",
        "/legacy/quotes",
        False,
        Reason.TENANT_OUT_OF_SCOPE,
    ),
    Case(
        "the tenant may come from a JWT claim",
        who("legacy", tenants=("type:test",)),
        "GET",
        "/cc/quotes",
        True,
        Reason.ALLOWED,
        claims=(("tenant", "acme-test"),),
    ),
]


def run(case: Case, roles: dict[str, Role] = ROLES):
    match = MAP.match(case.method, case.path)
    tenant_id = (
        resolve_tenant_id(match.endpoint, match.params, dict(case.headers), dict(case.claims))
        if match
        else None
    )
    subject = Subject(case.principal, roles, case.token) if case.principal else None
    return decide(MAP, match, subject, TENANTS.get(tenant_id or ""), tenant_id)


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_decision_rule(case: Case) -> None:
    """Each row is one rule of the decision (its id says which)."""
    decision = run(case)
    assert (decision.allowed, decision.reason) == (case.allowed, case.reason)
    assert decision.missing == case.missing


def test_unknown_and_foreign_tenants_are_told_apart_only_in_detail() -> None:
    """Same public reason for unknown and out-of-scope tenants; the detail differs."""
    unknown = run(CASES[5])
    foreign = run(CASES[6])
    assert unknown.reason == foreign.reason == Reason.TENANT_OUT_OF_SCOPE
    assert unknown.detail == ScopeDetail.UNKNOWN_TENANT
    assert foreign.detail == ScopeDetail.OTHER_ACCOUNT


def test_unmapped_passthrough_is_allowed_when_the_map_says_so() -> None:
    """``unmapped: passthrough`` forwards what no entry matches."""
    passthrough = EndpointMap(endpoints=ENDPOINTS, unmapped="passthrough")
    decision = decide(passthrough, passthrough.match("GET", "/nope"), None, None, None)
    assert (decision.allowed, decision.reason) == (True, Reason.UNMAPPED_PASSTHROUGH)


def test_roles_of_another_account_never_count() -> None:
    """A role object from another account is ignored even if handed in by name."""
    foreign = {"sales-agent": Role("globex", "sales-agent", "Sales Agent", ("*.*",))}
    decision = run(CASES[13], roles=foreign)
    assert decision.reason == Reason.MISSING_PERMISSION


def test_admin_grants_cannot_be_edited_away() -> None:
    """admin keeps *.* even if its stored grants were emptied."""
    roles = ROLES | {"admin": replace(ROLES["admin"], permissions=())}
    case = CASES[10]
    assert run(case, roles=roles).allowed


def test_encoded_tenant_segment_is_decoded_for_lookup() -> None:
    """/policy/%61cme-prod/... names tenant acme-prod, as the upstream will read it."""
    match = MAP.match("GET", "/policy/%61cme-prod/quotes/q1")
    assert match is not None
    assert resolve_tenant_id(match.endpoint, match.params, {}, None) == "acme-prod"


# --------------------------------------------------------------------------- properties

ROLE_NAMES = sorted(ROLES)
_grant = st.sampled_from(
    [
        "quotes.read",
        "quotes.write",
        "quotes.*",
        "policies.write",
        "search.read",
        "*.*",
        "contacts.write",
        "quotes.price",
        "authTokens.write",
        "quote.fetch",
        "fnols.write",
    ]
)
_assignment = st.one_of(
    st.sampled_from(ROLE_NAMES),
    st.tuples(st.sampled_from(ROLE_NAMES), st.sampled_from(sorted(TENANTS))),
)
_scope = st.lists(st.sampled_from([*sorted(TENANTS), "any", "type:test"]), max_size=3)
_request = st.sampled_from(
    [(c.method, c.path, c.headers, c.claims) for c in CASES if c.path != "/nope"]
)


def _decide(principal: Principal, request: tuple, tok: AuthToken | None = None):
    method, path, headers, claims = request
    case = Case(
        "",
        principal,
        method,
        path,
        False,
        Reason.ALLOWED,
        token=tok,
        headers=headers,
        claims=claims,
    )
    return run(case)


@given(st.lists(_assignment, max_size=4), _scope, st.lists(_grant, max_size=4), _scope, _request)
def test_a_token_never_exceeds_its_owner(roles, scope, grants, token_scope, request) -> None:
    """Whatever a token allows, its owner alone is allowed too."""
    principal = who(*roles, tenants=tuple(scope))
    with_token = _decide(principal, request, token(tuple(grants), tuple(token_scope)))
    if with_token.allowed:
        assert _decide(principal, request).allowed


@given(st.lists(_assignment, max_size=4), _assignment, _scope, _request)
def test_adding_a_role_never_turns_allow_into_deny(roles, extra, scope, request) -> None:
    """Roles only add grants: more roles can never deny what fewer allowed."""
    before = _decide(who(*roles, tenants=tuple(scope)), request)
    after = _decide(who(*roles, extra, tenants=tuple(scope)), request)
    if before.allowed:
        assert after.allowed


SCOPES = [
    # held, requested, beyond
    (("any",), ("any", "acme-prod", "type:test"), []),
    (("acme-prod",), ("acme-prod",), []),
    (("acme-prod",), ("acme-test", "any", "type:test"), ["acme-test", "any", "type:test"]),
    (("type:test",), ("acme-test", "type:test", "acme-prod"), ["acme-prod"]),
    (("type:test",), ("ghost",), ["ghost"]),
]


@pytest.mark.parametrize(
    ("held", "requested", "beyond"), SCOPES, ids=[f"{h}>{r}" for h, r, _ in SCOPES]
)
def test_scope_beyond(held: tuple[str, ...], requested: tuple[str, ...], beyond: list[str]) -> None:
    """A requested scope item is within a held scope by id, by any, or by type:test."""
    assert scope_beyond(held, requested, TENANTS) == beyond
