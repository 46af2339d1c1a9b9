"""A whole access model as one immutable snapshot: what a diff compares and lint reads.

A :class:`World` comes from the live store (:func:`world_from_store`) or from a
``policy.yaml`` laid over another world (:func:`overlay_policy`) exactly as
``permgate apply`` would leave it: tenants the file names are
added, roles it defines get its grants, principals it names get its kind, roles,
tenant scope and ``disabled`` flag; everything the file does not name stays (unless
pruned, as ``apply --prune`` does). A
policy file on its own is that overlay on an empty world, so every account it names
also holds the built-in roles. :func:`check_policy` runs apply's own planner for
the references and rules that only a store can judge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, cast

from permgate.core.model import (
    Enforcement,
    Principal,
    PrincipalKind,
    Role,
    RoleAssignment,
    Tenant,
    TenantType,
)
from permgate.core.roles import builtin_roles

if TYPE_CHECKING:
    from permgate.manage.policy_file import AccountSpec, Policy
    from permgate.store.base import Store

__all__ = ["EMPTY_WORLD", "World", "check_policy", "overlay_policy", "world_from_store"]


@dataclass(frozen=True, slots=True)
class World:
    """Tenants and principals by id, and each account's roles by name."""

    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    roles: Mapping[str, Mapping[str, Role]] = field(default_factory=dict)
    principals: Mapping[str, Principal] = field(default_factory=dict)

    def account_roles(self, account: str) -> Mapping[str, Role]:
        """The roles of ``account`` by name (empty for an unknown account)."""
        return self.roles.get(account, _NO_ROLES)

    def tenants_by_account(self) -> dict[str, list[Tenant]]:
        """Every tenant, grouped by its account."""
        grouped: dict[str, list[Tenant]] = {}
        for tenant in self.tenants.values():
            grouped.setdefault(tenant.account, []).append(tenant)
        return grouped


_NO_ROLES: Final[Mapping[str, Role]] = MappingProxyType({})
EMPTY_WORLD: Final = World()


async def world_from_store(store: Store) -> World:
    """Read every account's tenants, roles and principals from ``store``."""
    tenants: dict[str, Tenant] = {}
    roles: dict[str, dict[str, Role]] = {}
    principals: dict[str, Principal] = {}
    for account in await store.list_accounts():
        tenants.update((t.id, t) for t in await store.list_tenants(account))
        roles[account] = {r.name: r for r in await store.list_roles(account)}
        principals.update((p.id, p) for p in await store.list_principals(account))
    return World(tenants, roles, principals)


def overlay_policy(
    base: World,
    policy: Policy,
    *,
    default_enforcement: Enforcement = "enforce",
    prune: bool = False,
) -> World:
    """``base`` as ``permgate apply`` of ``policy`` would leave it; with ``prune``, as
    ``apply --prune`` would (principals and custom roles of the file's accounts that
    the file does not name are gone).

    The policy must already be valid against ``base`` (see :func:`check_policy`): a
    tenant's type is kept as ``base`` has it, since apply refuses to change it.
    """
    tenants = dict(base.tenants)
    roles = {account: dict(by_name) for account, by_name in base.roles.items()}
    principals = dict(base.principals)
    for spec in policy.accounts:
        account_roles = roles.setdefault(spec.id, {r.name: r for r in builtin_roles(spec.id)})
        if prune:
            _prune(spec, account_roles, principals)
        for tenant in spec.tenants:
            current = tenants.get(tenant.id)
            mode = cast("Enforcement", tenant.enforcement or default_enforcement)
            if current is None:
                kind = cast("TenantType", tenant.type)  # the parser allows only the two
                tenants[tenant.id] = Tenant(tenant.id, spec.id, kind, mode)
            elif tenant.enforcement is not None:
                tenants[tenant.id] = Tenant(current.id, current.account, current.type, mode)
        for role in spec.roles:
            existing = account_roles.get(role.name)
            if existing is None:
                display = role.display_name or role.name
                account_roles[role.name] = Role(spec.id, role.name, display, role.permissions)
            else:
                account_roles[role.name] = Role(
                    spec.id, role.name, existing.display_name, role.permissions, existing.builtin
                )
        for principal in spec.principals:
            assignments = {RoleAssignment(ref.value) for ref in principal.roles}
            for tenant_ref, role_refs in principal.tenant_roles:
                assignments.update(RoleAssignment(r.value, tenant_ref.value) for r in role_refs)
            ordered = sorted(assignments, key=lambda a: (a.role, a.tenant or ""))
            principals[principal.id] = Principal(
                principal.id,
                spec.id,
                cast("PrincipalKind", principal.kind),
                tuple(ordered),
                tuple(dict.fromkeys(ref.value for ref in principal.tenants)),
                principal.disabled,
            )
    return World(tenants, roles, principals)


def _prune(spec: AccountSpec, roles: dict[str, Role], principals: dict[str, Principal]) -> None:
    """Drop what ``apply --prune`` deletes in the account: unnamed principals, and
    roles that are neither built in nor defined by the file."""
    named = {p.id for p in spec.principals}
    for principal_id in [
        pid for pid, p in principals.items() if p.account == spec.id and pid not in named
    ]:
        del principals[principal_id]
    defined = {r.name for r in spec.roles}
    for name in [n for n, r in roles.items() if not r.builtin and n not in defined]:
        del roles[name]


async def check_policy(store: Store, policy: Policy, *, prune: bool = False) -> None:
    """Raise :class:`permgate.manage.policy_file.PolicyError` when ``permgate apply`` would
    refuse ``policy`` on ``store`` (unknown roles or tenants, a tenant of another
    account, a changed tenant type...). Reads only; writes nothing."""
    from permgate.manage.policy_file import plan_policy

    await plan_policy(store, policy, prune=prune)
