"""``permgate diff`` at scale: 2,000 principals × 50 tenants × the shipped map.

    .venv/bin/python bench/diff.py            # a few seconds
    .venv/bin/python bench/diff.py --rounds 5 --principals 2000 --tenants 50

Builds one account with 50 tenants (every fifth one TEST), 40 roles drawn from the
shipped map's permissions (exact grants, ``group.*``, the built-in roles), and 2,000
principals with one to three roles, a few tenant-bound assignments, scopes of tenant
ids, ``any`` or ``type:test``, and a handful of admins. It then times
:func:`permgate.review.diff.diff_access` (the whole enumeration, in one process on one
core) for three changes: none, one role gaining a permission group, and a map where
every tenth entry needs one more permission. Prints the median of each over the rounds
and how many changes it found. Deterministic (a fixed random seed).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from permgate.endpoints import EndpointMap, load_map  # noqa: E402
from permgate.model import Principal, Role, RoleAssignment, Tenant  # noqa: E402
from permgate.review.diff import Side, diff_access  # noqa: E402
from permgate.review.world import World  # noqa: E402
from permgate.roles import builtin_roles  # noqa: E402

ACCOUNT = "acme"


def build_world(endpoint_map: EndpointMap, principals: int, tenants: int, seed: int) -> World:
    """One account: tenants, roles from the map's permissions, principals."""
    rng = random.Random(seed)
    tenant_records = {
        f"t{i:03d}": Tenant(f"t{i:03d}", ACCOUNT, "TEST" if i % 5 == 0 else "PRODUCTION")
        for i in range(tenants)
    }
    permissions = sorted(endpoint_map.permissions())
    groups = sorted({p.partition(".")[0] for p in permissions})
    roles = {r.name: r for r in builtin_roles(ACCOUNT)}
    for i in range(40):
        grants = rng.sample(permissions, rng.randint(3, 25))
        grants += [f"{g}.*" for g in rng.sample(groups, rng.randint(0, 2))]
        roles[f"role{i:02d}"] = Role(ACCOUNT, f"role{i:02d}", f"Role {i}", tuple(grants))
    role_names = sorted(roles)
    tenant_ids = sorted(tenant_records)
    people: dict[str, Principal] = {}
    for i in range(principals):
        held = [RoleAssignment(name) for name in rng.sample(role_names[4:], rng.randint(1, 3))]
        if rng.random() < 0.2:
            held.append(RoleAssignment(rng.choice(role_names[4:]), rng.choice(tenant_ids)))
        if i % 400 == 0:
            held.append(RoleAssignment("admin"))
        draw = rng.random()
        if draw < 0.1:
            scope: tuple[str, ...] = ("any",)
        elif draw < 0.2:
            scope = ("type:test", rng.choice(tenant_ids))
        else:
            scope = tuple(rng.sample(tenant_ids, rng.randint(1, 10)))
        people[f"p{i:04d}"] = Principal(f"p{i:04d}", ACCOUNT, "user", tuple(held), scope)
    return World(tenant_records, {ACCOUNT: roles}, people)


def role_gains_group(world: World, endpoint_map: EndpointMap) -> World:
    """role00 gains one whole permission group it did not have."""
    roles = dict(world.account_roles(ACCOUNT))
    group = sorted({p.partition(".")[0] for p in endpoint_map.permissions()})[0]
    role = roles["role00"]
    roles["role00"] = replace(role, permissions=(*role.permissions, f"{group}.*"))
    return World(world.tenants, {ACCOUNT: roles}, world.principals)


def stricter_map(endpoint_map: EndpointMap) -> EndpointMap:
    """Every tenth non-public entry needs one more permission."""
    endpoints = tuple(
        replace(e, permissions=(*e.permissions, "audit.extra"))
        if i % 10 == 0 and not e.public
        else e
        for i, e in enumerate(endpoint_map.endpoints)
    )
    return replace(endpoint_map, endpoints=endpoints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--principals", type=int, default=2000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    endpoint_map = load_map(ROOT / "endpoint_map.yaml")
    world = build_world(endpoint_map, args.principals, args.tenants, seed=17)
    cases = {
        "no change": (Side(world, endpoint_map), Side(world, endpoint_map)),
        "a role gains a group": (
            Side(world, endpoint_map),
            Side(role_gains_group(world, endpoint_map), endpoint_map),
        ),
        "stricter map": (Side(world, endpoint_map), Side(world, stricter_map(endpoint_map))),
    }
    triples = args.principals * args.tenants * len(endpoint_map.endpoints)
    print(
        f"{args.principals} principals x {args.tenants} tenants x "
        f"{len(endpoint_map.endpoints)} endpoints = {triples:,} decisions per side"
    )
    print(f"{'change':<22} {'median s':>9} {'gained':>9} {'lost':>9}   runs (s)")
    for name, (old, new) in cases.items():
        runs = []
        impact = None
        for _ in range(args.rounds):
            start = time.process_time()
            impact = diff_access(old, new)
            runs.append(time.process_time() - start)
        assert impact is not None
        print(
            f"{name:<22} {statistics.median(runs):>9.2f} {len(impact.gained):>9,} "
            f"{len(impact.lost):>9,}   {' '.join(f'{r:.2f}' for r in runs)}"
        )


if __name__ == "__main__":
    main()
