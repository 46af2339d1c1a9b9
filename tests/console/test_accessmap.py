"""The access map's cells are the core's decisions: tables of principals, tenants and
endpoints whose expected answers are worked out by hand from the grants."""

from __future__ import annotations

import pytest

from permgate.console.accessmap import (
    NO_TENANT,
    endpoint_access,
    endpoint_group,
    permission_catalogue,
    principal_access,
)
from permgate.core.model import Principal, Role, RoleAssignment, Tenant
from permgate.core.roles import builtin_roles
from permgate.maps.loader import parse_map

MAP = parse_map(
    """
version: 1
defaults: {tenant: {path_param: t}}
endpoints:
  - {id: quotes.get, method: GET, path: "/p/{t}/quotes/{q}", permissions: [quotes.read]}
  - {id: quotes.create, method: POST, path: "/p/{t}/quotes", permissions: [quotes.write]}
  - {id: quotes.price, method: POST, path: "/p/{t}/quotes/{q}/price",
     any_of: [quotes.write, quotes.price]}
  - {id: claims.list, method: GET, path: /claims, permissions: [claims.read], tenant: none}
  - {id: ping, method: GET, path: "/p/{t}/ping", permissions: []}
  - {id: health, method: GET, path: /health, public: true}
""",
    "map.yaml",
)
PROD = Tenant("prod", "acme", "PRODUCTION")
TEST = Tenant("test", "acme", "TEST")
TENANTS = [PROD, TEST]
ROLES = {r.name: r for r in builtin_roles("acme")} | {
    "pricer": Role("acme", "pricer", "Pricer", ("quotes.price", "quotes.read")),
    "writer": Role("acme", "writer", "Writer", ("quotes.*",)),
    "claims": Role("acme", "claims", "Claims", ("claims.read",)),
}


def _p(pid: str, roles: list[tuple[str, str | None]], scope: list[str], **kw: bool) -> Principal:
    return Principal(
        pid, "acme", roles=tuple(RoleAssignment(r, t) for r, t in roles), tenants=tuple(scope), **kw
    )


PRINCIPALS = {
    "admin": _p("admin", [("admin", None)], []),
    "pricer": _p("pricer", [("pricer", None)], ["prod"]),
    "writer-on-test": _p("writer-on-test", [("writer", "test")], ["any"]),
    "claims": _p("claims", [("claims", None)], []),
    "nobody": _p("nobody", [], ["any"]),
    "disabled": _p("disabled", [("admin", None)], [], disabled=True),
}


@pytest.mark.parametrize(
    ("principal", "group", "column", "allowed"),
    [
        ("admin", "quotes", "prod", ("quotes.get", "quotes.create", "quotes.price")),
        ("pricer", "quotes", "prod", ("quotes.get", "quotes.price")),
        ("pricer", "quotes", "test", ()),  # test is outside its scope
        ("writer-on-test", "quotes", "test", ("quotes.get", "quotes.create", "quotes.price")),
        ("writer-on-test", "quotes", "prod", ()),  # the role is held on test only
        ("claims", "claims", NO_TENANT, ("claims.list",)),
        ("nobody", "(authentication only)", "prod", ("ping",)),
        ("nobody", "(public)", NO_TENANT, ("health",)),
        ("disabled", "quotes", "prod", ()),
        ("disabled", "(public)", NO_TENANT, ("health",)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_principal_grid_cell(
    principal: str, group: str, column: str, allowed: tuple[str, ...]
) -> None:
    """Each cell lists the group's endpoints the principal may call on that column."""
    grid = principal_access(MAP, PRINCIPALS[principal], ROLES, TENANTS)
    assert grid.cells[(group, column)].allowed == allowed


@pytest.mark.parametrize(
    ("allowed", "state"),
    [
        ((), "none"),
        (("quotes.get",), "some"),
        (("quotes.get", "quotes.create", "quotes.price"), "all"),
    ],
    ids=["none", "some", "all"],
)
def test_cell_state_reads_at_a_glance(allowed: tuple[str, ...], state: str) -> None:
    """A cell is all, some or none of its group's endpoints."""
    grid = principal_access(MAP, PRINCIPALS["admin"], ROLES, TENANTS)
    cell = grid.cells[("quotes", "prod")]
    assert type(cell)(allowed, cell.total).state == state


def test_grid_columns_are_the_tenants_then_no_tenant() -> None:
    """Tenants first, then the column of endpoints that name no tenant."""
    grid = principal_access(MAP, PRINCIPALS["admin"], ROLES, TENANTS)
    assert grid.columns == ("prod", "test", NO_TENANT)
    assert grid.groups == ("(authentication only)", "(public)", "claims", "quotes")


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            "quotes.create",
            {"admin": {"prod", "test"}, "writer-on-test": {"test"}},
        ),
        (
            "quotes.price",
            {"admin": {"prod", "test"}, "pricer": {"prod"}, "writer-on-test": {"test"}},
        ),
        ("claims.list", {"admin": {NO_TENANT}, "claims": {NO_TENANT}}),
    ],
    ids=["all-of", "any-of", "no-tenant"],
)
def test_who_can_call_an_endpoint(endpoint: str, expected: dict[str, set[str]]) -> None:
    """For one endpoint: every principal that may call it, and on which tenants."""
    found = endpoint_access(MAP, MAP.get(endpoint), list(PRINCIPALS.values()), ROLES, TENANTS)  # type: ignore[arg-type]
    assert {k: set(v) for k, v in found.allowed.items()} == expected


@pytest.mark.parametrize(
    ("endpoint", "group"),
    [("quotes.price", "quotes"), ("ping", "(authentication only)"), ("health", "(public)")],
    ids=["first-permission", "no-permission", "public"],
)
def test_endpoint_group(endpoint: str, group: str) -> None:
    """An endpoint is grouped by its first permission's group."""
    assert endpoint_group(MAP.get(endpoint)) == group  # type: ignore[arg-type]


def test_catalogue_lists_each_permission_with_what_it_unlocks() -> None:
    """The role picker: permissions by group, each with the endpoints needing it."""
    catalogue = permission_catalogue([MAP])
    assert list(catalogue) == ["claims", "quotes"]
    unlocks = {u.permission: [e.id for e in u.endpoints] for u in catalogue["quotes"]}
    assert unlocks == {
        "quotes.price": ["quotes.price"],
        "quotes.read": ["quotes.get"],
        "quotes.write": ["quotes.create", "quotes.price"],
    }
