"""The diff's shortcuts (grant-set classes, endpoint bit masks) give exactly what
calling the decision core on every (principal, tenant, endpoint) gives, on random
small worlds and maps."""

from __future__ import annotations

import random

import pytest

from permgate.core.decision import Subject, decide
from permgate.core.endpoints import NO_TENANT, Endpoint, EndpointMap, Match, TenantSource
from permgate.core.model import Principal, Role, RoleAssignment, Tenant
from permgate.core.roles import builtin_roles
from permgate.review.diff import Side, diff_access
from permgate.review.world import World

PERMISSIONS = ["quotes.read", "quotes.write", "payments.read", "invoices.read", "users.list"]
GRANTS = [*PERMISSIONS, "quotes.*", "payments.*"]
TENANT_SOURCES = [TenantSource("path_param", "t"), TenantSource("header", "X-Tenant"), NO_TENANT]


def random_map(rng: random.Random) -> EndpointMap:
    """Up to eight entries out of ten ids, each with random requirements and tenant."""
    endpoints = []
    for i in rng.sample(range(10), rng.randint(3, 8)):
        public = rng.random() < 0.1
        endpoints.append(
            Endpoint(
                id=f"e{i}",
                methods=frozenset({"GET"}),
                path=f"/{{t}}/e{i}",
                permissions=tuple(rng.sample(PERMISSIONS, rng.randint(0, 2))),
                any_of=tuple(rng.sample(PERMISSIONS, rng.choice([0, 0, 2]))),
                tenant=rng.choice(TENANT_SOURCES),
                public=public,
            )
        )
    unmapped = "passthrough" if rng.random() < 0.2 else "deny"
    read_actions = frozenset({"read"}) if rng.random() < 0.5 else frozenset({"read", "list"})
    return EndpointMap(endpoints=tuple(endpoints), unmapped=unmapped, read_actions=read_actions)


def random_world(rng: random.Random) -> World:
    """Two accounts, tenants of both types, custom and built-in roles, varied principals."""
    tenants = {
        t.id: t
        for t in [
            Tenant("a-prod", "acme"),
            Tenant("a-test", "acme", "TEST"),
            Tenant("b-prod", "beta"),
        ]
        + ([Tenant("a-new", "acme", "TEST")] if rng.random() < 0.5 else [])
    }
    roles: dict[str, dict[str, Role]] = {}
    for account in ("acme", "beta"):
        by_name = {r.name: r for r in builtin_roles(account)}
        for i in range(3):
            grants = tuple(rng.sample(GRANTS, rng.randint(0, 3)))
            by_name[f"r{i}"] = Role(account, f"r{i}", f"R{i}", grants)
        roles[account] = by_name
    principals = {}
    for i in range(8):
        if rng.random() < 0.15:
            continue  # absent on this side
        account = "beta" if i == 7 else "acme"
        names = sorted(roles[account])
        held = [RoleAssignment(n) for n in rng.sample(names, rng.randint(0, 2))]
        if rng.random() < 0.4:
            held.append(RoleAssignment(rng.choice(names), rng.choice(sorted(tenants))))
        scope = tuple(rng.sample(["a-prod", "a-test", "b-prod", "any", "type:test"], 2))
        principals[f"p{i}"] = Principal(
            f"p{i}", account, "user", tuple(held), scope, disabled=rng.random() < 0.1
        )
    return World(tenants, roles, principals)


def decision(side: Side, principal_id: str, tenant_id: str | None, endpoint_id: str) -> bool:
    """One request decided by the core, as the gateway would decide it."""
    endpoint_map = side.endpoint_map
    endpoint = endpoint_map.get(endpoint_id)
    if endpoint is None:
        return endpoint_map.unmapped == "passthrough"
    if endpoint.public:
        return True
    principal = side.world.principals.get(principal_id)
    if principal is None or principal.disabled:
        return False
    subject = Subject(principal, side.world.account_roles(principal.account))
    tenant = side.world.tenants.get(tenant_id) if tenant_id is not None else None
    return decide(endpoint_map, Match(endpoint, {}), subject, tenant, tenant_id).allowed


def brute_force(old: Side, new: Side) -> set[str]:
    """Every changed decision, request by request over every principal and tenant."""
    ids = {e.id for e in old.endpoint_map.endpoints} | {e.id for e in new.endpoint_map.endpoints}
    changes: set[str] = set()
    for principal_id in set(old.world.principals) | set(new.world.principals):
        accounts = {
            side.world.principals[principal_id].account
            for side in (old, new)
            if principal_id in side.world.principals
        }
        tenants = {
            t.id
            for side in (old, new)
            for t in side.world.tenants.values()
            if t.account in accounts
        }
        for endpoint_id in ids:
            bound = any(
                (e := side.endpoint_map.get(endpoint_id)) is not None
                and not e.public
                and e.tenant.kind != "none"
                for side in (old, new)
            )
            for tenant_id in sorted(tenants) if bound else [None]:
                was = decision(old, principal_id, tenant_id, endpoint_id)
                now = decision(new, principal_id, tenant_id, endpoint_id)
                if was != now:
                    sign = "+" if now else "-"
                    changes.add(f"{sign} {principal_id} {tenant_id or '-'} {endpoint_id}")
    return changes


@pytest.mark.parametrize("seed", range(150), ids=lambda s: f"seed-{s}")
def test_diff_equals_deciding_every_request(seed: int) -> None:
    """diff_access lists exactly the decisions that differ when each is made by decide()."""
    rng = random.Random(seed)
    old = Side(random_world(rng), random_map(rng))
    new = Side(random_world(rng), random_map(rng)) if seed % 3 else Side(old.world, random_map(rng))
    impact = diff_access(old, new)
    got = {f"+ {c.principal} {c.tenant or '-'} {c.endpoint}" for c in impact.gained} | {
        f"- {c.principal} {c.tenant or '-'} {c.endpoint}" for c in impact.lost
    }
    assert got == brute_force(old, new)
