"""``permgate diff`` at scale: 2,000 principals × 50 tenants × the shipped map.

    .venv/bin/python bench/diff.py            # a few seconds
    .venv/bin/python bench/diff.py --rounds 5 --principals 2000 --tenants 50

Builds one account with 50 tenants (every fifth one TEST), 40 roles drawn from the
shipped map's permissions (exact grants, ``group.*``, the built-in roles), and 2,000
principals with one to three roles, a few tenant-bound assignments, scopes of tenant
ids, ``any`` or ``type:test``, and a handful of admins. It then times
:func:`permgate.review.diff.diff_access` (the whole enumeration, in one process on one
core) for three changes: none, one role gaining a permission group, and a map where
every tenth entry needs one more permission. Prints the median CPU time of each over the
rounds and how many changes it found; then runs the whole command once, as a process, on
the world written out as two policy files (the second with the role change). Deterministic
(a fixed random seed).
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from permgate.core.endpoints import EndpointMap  # noqa: E402
from permgate.core.model import Principal, Role, RoleAssignment, Tenant  # noqa: E402
from permgate.core.roles import builtin_roles  # noqa: E402
from permgate.maps.loader import load_map  # noqa: E402
from permgate.review.diff import Side, diff_access  # noqa: E402
from permgate.review.world import World  # noqa: E402

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


def policy_text(world: World) -> str:
    """The world as a policy.yaml (custom roles only; built-in ones are implicit)."""
    lines = ["accounts:", f"  - id: {ACCOUNT}", "    tenants:"]
    lines += [f"      - {{id: {t.id}, type: {t.type}}}" for t in world.tenants.values()]
    lines.append("    roles:")
    for role in world.account_roles(ACCOUNT).values():
        if not role.builtin:
            grants = ", ".join(f"'{g}'" for g in role.permissions)
            lines.append(f"      - {{name: {role.name}, permissions: [{grants}]}}")
    lines.append("    principals:")
    for p in world.principals.values():
        everywhere = ", ".join(a.role for a in p.roles if a.tenant is None)
        lines.append(f"      - id: {p.id}")
        lines.append(f"        roles: [{everywhere}]")
        on_tenant: dict[str, list[str]] = {}
        for a in p.roles:
            if a.tenant is not None:
                on_tenant.setdefault(a.tenant, []).append(a.role)
        if on_tenant:
            pairs = ", ".join(f"{t}: [{', '.join(r)}]" for t, r in on_tenant.items())
            lines.append(f"        tenant_roles: {{{pairs}}}")
        lines.append(f"        tenants: [{', '.join(p.tenants)}]")
    return "\n".join(lines) + "\n"


def time_command(world: World, changed: World) -> tuple[float, float, int]:
    """``permgate diff --policy OLD --to-policy NEW --json`` on the shipped map, as a
    process: (wall seconds, CPU seconds, exit code)."""
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        old, new = Path(tmp) / "old.yaml", Path(tmp) / "new.yaml"
        old.write_text(policy_text(world), encoding="utf-8")
        new.write_text(policy_text(changed), encoding="utf-8")
        map_path = str(ROOT / "endpoint_map.yaml")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "permgate", "diff", "--map", map_path, "--to-map", map_path,
             "--policy", str(old), "--to-policy", str(new), "--json"],
            capture_output=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.returncode


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
    wall, cpu, code = time_command(world, role_gains_group(world, endpoint_map))
    print(
        f"the whole command (read two {args.principals}-principal policy files, check them, "
        f"diff, print JSON; exit {code}): {wall:.1f} s wall, {cpu:.1f} s CPU"
    )


if __name__ == "__main__":
    main()
