"""Cost of match + decide on a warm path, in ns/op (aim: at most 10 µs, flat in map size).

    .venv/bin/python bench/decide.py

Runs three maps in one process, so the figures are comparable with each other:
20 entries, the shipped 722-entry map, and a synthetic 10,000-entry map. The
interesting number is the ratio between them: a trie walk must not grow with the
number of entries. Absolute numbers on these shared machines drift by tens of %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from permgate.core.decision import Subject, decide, resolve_tenant_id
from permgate.core.endpoints import Endpoint, EndpointMap, TenantSource
from permgate.core.model import AuthToken, Principal, RoleAssignment, Tenant
from permgate.core.roles import builtin_roles
from permgate.maps.loader import load_map

ROOT = Path(__file__).resolve().parents[1]
BY_PATH = TenantSource("path_param", "tenantLocator")
TENANT = Tenant("acme-prod", "acme", "PRODUCTION")
ROLES = {r.name: r for r in builtin_roles("acme")}
PRINCIPAL = Principal("alice", "acme", "user", (RoleAssignment("full-access"),), ("acme-prod",))
TOKEN = AuthToken("t1", "alice", "acme", "ci", ("quotes.*", "policies.read"), ("acme-prod",))


def synthetic_map(size: int) -> EndpointMap:
    """``size`` entries under distinct services, each with tenant and id params."""
    endpoints = []
    for i in range(size):
        service = f"svc{i // 10}"
        resource = f"res{i % 10}"
        endpoints.append(
            Endpoint(
                id=f"e{i}",
                methods=frozenset({"GET"}),
                path=f"/{service}/{{tenantLocator}}/{resource}/{{locator}}",
                permissions=(f"{resource}.read",),
                tenant=BY_PATH,
            )
        )
    endpoints.append(
        Endpoint(
            "target",
            frozenset({"GET"}),
            "/policy/{tenantLocator}/quotes/{locator}",
            ("quotes.read",),
            tenant=BY_PATH,
        )
    )
    return EndpointMap(endpoints=tuple(endpoints), default_tenant=BY_PATH)


def measure_once(endpoint_map: EndpointMap, path: str, n: int = 20_000) -> float:
    """ns per match + tenant resolution + decide, for a principal with a token."""
    subject = Subject(PRINCIPAL, ROLES, TOKEN)
    start = time.perf_counter_ns()
    for _ in range(n):
        match = endpoint_map.match("GET", path)
        assert match is not None
        tenant_id = resolve_tenant_id(match.endpoint, match.params, {}, None)
        decision = decide(endpoint_map, match, subject, TENANT, tenant_id)
    elapsed = (time.perf_counter_ns() - start) / n
    assert decision.allowed, decision
    return elapsed


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    path = "/policy/acme-prod/quotes/Q-1001"
    shipped = load_map(ROOT / "endpoint_map.yaml")
    rows = [
        ("synthetic, 20 entries", synthetic_map(19)),
        (f"shipped map, {len(shipped.endpoints)} entries", shipped),
        ("synthetic, 10,000 entries", synthetic_map(9_999)),
    ]
    # Rounds in rotation, medians: drift on a shared machine hits every map alike.
    samples: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(9):
        for name, endpoint_map in rows:
            samples[name].append(measure_once(endpoint_map, path))
    results = [(name, statistics.median(samples[name])) for name, _ in rows]
    base = results[0][1]
    print(f"{'map':<32} {'ns/op':>9} {'vs 20':>7}")
    for name, ns in results:
        print(f"{name:<32} {ns:>9.0f} {ns / base:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
