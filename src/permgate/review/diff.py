"""The exact access impact of a change: who gains and loses which endpoint on which tenant.

Each side of the comparison is a :class:`Side` (a :class:`World` and an endpoint
map). The result lists every (principal, tenant, endpoint) whose allow/deny decision
differs between the two sides, whatever the tenant's enforcement mode: shadow mode
only decides whether a deny is enforced, not what the decision is.

Enumeration is exact but never request by request. Endpoints are bits of one integer
per side; what a grant set allows is computed once per distinct (grant set,
requirement) with the decision core's own rule (:func:`permgate.core.decision.missing_permissions`
over :meth:`permgate.core.permissions.GrantSet.covers`), and a principal's grants on a
tenant come from :func:`permgate.core.decision.effective_grants`. So principals with the
same effective grants on a tenant cost one dictionary lookup each, and 2,000
principals × 50 tenants × 722 endpoints take about a second.

How each endpoint is compared:

* tenant from a path parameter, header or JWT claim: per tenant of the principal's
  account; a request naming that tenant is decided as the gateway would (tenant
  known, in the account, in the principal's scope or the principal an admin, then the
  grants the principal holds on it);
* ``tenant: none`` on both sides: once per principal, with tenant ``None`` (shown as
  ``-``): only roles assigned with no tenant count, and no scope applies;
* ``tenant: none`` on one side only: per tenant, the tenantless side deciding the same
  for every tenant, so a move to a tenant-bound entry shows exactly where access is lost;
* public entries allow everyone, principal or not, on any tenant; public on both
  sides never changes;
* an entry missing from one side (by id) is unmapped there: denied, or allowed to
  everyone when that map passes unmapped requests through.

A principal missing from a side, or disabled there, is refused before any decision:
it has no access but to public entries. Auth tokens are not enumerated: a token never
exceeds its owner, so its owner's losses bound the token's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from permgate.core.decision import effective_grants, is_admin, missing_permissions, scope_allows
from permgate.core.endpoints import Endpoint, EndpointMap
from permgate.core.model import Principal, Tenant
from permgate.core.permissions import GrantSet
from permgate.review.world import World

__all__ = ["AccessChange", "Impact", "Side", "diff_access"]


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a comparison: the access model and the endpoint map."""

    world: World
    endpoint_map: EndpointMap


@dataclass(frozen=True, slots=True)
class AccessChange:
    """One (principal, tenant, endpoint) whose decision changes; ``tenant`` is None for
    an entry without a tenant on both sides. ``method`` and ``path`` are the entry's on
    the side that allows it."""

    principal: str
    endpoint: str
    tenant: str | None
    method: str
    path: str


@dataclass(frozen=True, slots=True)
class Impact:
    """What a change does: access gained and access lost, each sorted per principal,
    then per endpoint, then tenant."""

    gained: tuple[AccessChange, ...]
    lost: tuple[AccessChange, ...]

    def __bool__(self) -> bool:
        return bool(self.gained or self.lost)


def method_label(endpoint: Endpoint) -> str:
    """The entry's methods as one word: ``GET``, ``GET,HEAD`` or ``*``."""
    return ",".join(sorted(endpoint.methods))


class _Evaluator:
    """What one side allows, as a bit mask over the shared endpoint index."""

    def __init__(self, side: Side, index: dict[str, int]) -> None:
        self.world = side.world
        self.read_actions = side.endpoint_map.read_actions
        present = {e.id for e in side.endpoint_map.endpoints}
        passthrough = side.endpoint_map.unmapped == "passthrough"
        self.free = 0  # allowed to anyone: public, or unmapped under passthrough
        self.bound = 0  # decided on a tenant
        self.tenantless = 0  # decided without a tenant
        self.requirements: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        for endpoint in side.endpoint_map.endpoints:
            bit = 1 << index[endpoint.id]
            if endpoint.public:
                self.free |= bit
                continue
            if endpoint.tenant.kind == "none":
                self.tenantless |= bit
            else:
                self.bound |= bit
            key = (endpoint.permissions, endpoint.any_of)
            self.requirements[key] = self.requirements.get(key, 0) | bit
        if passthrough:
            for endpoint_id, position in index.items():
                if endpoint_id not in present:
                    self.free |= 1 << position
        self._allowed: dict[GrantSet, int] = {}
        self.tenants_by_account = self.world.tenants_by_account()

    def allowed(self, grants: GrantSet) -> int:
        """Every non-public entry whose permissions ``grants`` satisfies, once per grant set."""
        mask = self._allowed.get(grants)
        if mask is None:
            read_actions = self.read_actions

            def covered(permission: str) -> bool:
                return grants.covers(permission, read_actions)

            mask = 0
            for (permissions, any_of), bits in self.requirements.items():
                if not missing_permissions(covered, permissions, any_of):
                    mask |= bits
            self._allowed[grants] = mask
        return mask

    def principal(self, principal_id: str) -> Principal | None:
        """The principal as this side knows it, or None when it cannot authenticate."""
        principal = self.world.principals.get(principal_id)
        return None if principal is None or principal.disabled else principal

    def account_of(self, principal_id: str) -> str | None:
        """The principal's account on this side, or None when it is not there."""
        principal = self.world.principals.get(principal_id)
        return None if principal is None else principal.account

    def tenants_in(self, account: str | None) -> Iterable[Tenant]:
        """The tenants of ``account`` on this side."""
        return () if account is None else self.tenants_by_account.get(account, ())

    def masks(self, principal: Principal | None, tenant_ids: Iterable[str]) -> Iterator[int]:
        """What ``principal`` may call: first with no tenant, then on each tenant id."""
        if principal is None:
            yield self.free
            for _ in tenant_ids:
                yield self.free
            return
        roles = self.world.account_roles(principal.account)
        base = effective_grants(principal, roles, None)
        without_tenant = self.free | (self.allowed(base) & self.tenantless)
        yield without_tenant
        tenant_bound = {a.tenant for a in principal.roles if a.tenant is not None}
        admin = is_admin(principal)
        for tenant_id in tenant_ids:
            tenant = self.world.tenants.get(tenant_id)
            if (
                tenant is None
                or tenant.account != principal.account
                or not (admin or scope_allows(principal.tenants, tenant))
            ):
                yield without_tenant
                continue
            grants = (
                effective_grants(principal, roles, tenant_id) if tenant_id in tenant_bound else base
            )
            yield without_tenant | (self.allowed(grants) & self.bound)


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def diff_access(old: Side, new: Side) -> Impact:
    """Every (principal, tenant, endpoint) whose decision differs from ``old`` to ``new``."""
    endpoints: dict[str, tuple[Endpoint, Endpoint]] = {}  # id -> (as lost, as gained)
    for endpoint in old.endpoint_map.endpoints:
        endpoints[endpoint.id] = (endpoint, endpoint)
    for endpoint in new.endpoint_map.endpoints:
        before = endpoints.get(endpoint.id)
        endpoints[endpoint.id] = (endpoint if before is None else before[0], endpoint)
    ids = list(endpoints)
    index = {endpoint_id: position for position, endpoint_id in enumerate(ids)}
    before_side, after_side = _Evaluator(old, index), _Evaluator(new, index)
    per_tenant = before_side.bound | after_side.bound
    everything = (1 << len(ids)) - 1
    without_tenant = everything & ~per_tenant

    gained: list[AccessChange] = []
    lost: list[AccessChange] = []

    def record(principal_id: str, tenant_id: str | None, was: int, now: int, scope: int) -> None:
        changed = (was ^ now) & scope
        for position in _bits(changed):
            endpoint_id = ids[position]
            if now >> position & 1:
                endpoint = endpoints[endpoint_id][1]
                target = gained
            else:
                endpoint = endpoints[endpoint_id][0]
                target = lost
            target.append(
                AccessChange(
                    principal_id, endpoint_id, tenant_id, method_label(endpoint), endpoint.path
                )
            )

    principal_ids = sorted(set(old.world.principals) | set(new.world.principals))
    for principal_id in principal_ids:
        # Every tenant of the principal's account, on either side: a tenant only the
        # old side has can still be reached on the new one (through a passthrough).
        accounts = {before_side.account_of(principal_id), after_side.account_of(principal_id)}
        tenant_ids = sorted(
            {
                t.id
                for side in (before_side, after_side)
                for a in accounts
                for t in side.tenants_in(a)
            }
        )
        was = before_side.masks(before_side.principal(principal_id), tenant_ids)
        now = after_side.masks(after_side.principal(principal_id), tenant_ids)
        record(principal_id, None, next(was), next(now), without_tenant)
        if per_tenant:
            for tenant_id, was_mask, now_mask in zip(tenant_ids, was, now, strict=True):
                record(principal_id, tenant_id, was_mask, now_mask, per_tenant)
    return Impact(tuple(sorted(gained, key=_order)), tuple(sorted(lost, key=_order)))


def _order(change: AccessChange) -> tuple[str, str, str]:
    return change.principal, change.endpoint, change.tenant or ""
