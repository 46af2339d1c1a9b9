"""The access map: who can call what, on which tenant, decided by the pure core.

Every cell is :func:`permgate.core.decision.decide` run for one principal, one tenant and
one endpoint of the live map, exactly as the gateway would decide a request there
(tenant scope, then every permission), so the picture cannot disagree with the
gateway. Endpoints are shown in groups: an endpoint's group is the group of the
first permission it requires (``quotes`` for ``quotes.write``); endpoints needing no
permission form the group ``(authentication only)`` and public ones ``(public)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from permgate.core.decision import Subject, decide
from permgate.core.endpoints import Endpoint, EndpointMap, Match
from permgate.core.model import Principal, Role, Tenant

__all__ = [
    "NO_TENANT",
    "Cell",
    "EndpointAccess",
    "PrincipalAccess",
    "endpoint_access",
    "endpoint_group",
    "permission_catalogue",
    "principal_access",
]

AUTH_ONLY: Final = "(authentication only)"
PUBLIC: Final = "(public)"
# The column of endpoints that name no tenant: decided once, not per tenant.
NO_TENANT: Final = "(no tenant)"


def endpoint_group(endpoint: Endpoint) -> str:
    """The group an endpoint is shown under (see the module docstring)."""
    if endpoint.public:
        return PUBLIC
    required = (*endpoint.permissions, *endpoint.any_of)
    return required[0].partition(".")[0] if required else AUTH_ONLY


@dataclass(frozen=True, slots=True)
class Cell:
    """How many endpoints of a group a principal can call on one tenant."""

    allowed: tuple[str, ...]
    total: int

    @property
    def state(self) -> Literal["all", "some", "none"]:
        """``all``, ``some`` or ``none``: what the cell's colour and word say."""
        if len(self.allowed) == self.total:
            return "all"
        return "some" if self.allowed else "none"


@dataclass(frozen=True, slots=True)
class PrincipalAccess:
    """One principal's grid: ``cells[(group, column)]``; columns are tenant ids and,
    when the map has endpoints without a tenant, :data:`NO_TENANT`."""

    principal: Principal
    groups: tuple[str, ...]
    columns: tuple[str, ...]
    cells: Mapping[tuple[str, str], Cell]


@dataclass(frozen=True, slots=True)
class EndpointAccess:
    """Who can call one endpoint: ``allowed[principal id]`` is the columns it may call
    it on (tenant ids, or :data:`NO_TENANT` for an endpoint that names none)."""

    endpoint: Endpoint
    columns: tuple[str, ...]
    allowed: Mapping[str, frozenset[str]]


def _allowed(
    endpoint_map: EndpointMap,
    endpoint: Endpoint,
    subject: Subject,
    tenant: Tenant | None,
) -> bool:
    if subject.principal.disabled and not endpoint.public:
        return False  # the gateway refuses a disabled principal before deciding
    tenant_id = None if tenant is None else tenant.id
    return decide(endpoint_map, Match(endpoint), subject, tenant, tenant_id).allowed


def _columns(endpoints: Sequence[Endpoint], tenants: Sequence[Tenant]) -> tuple[str, ...]:
    columns = [t.id for t in tenants]
    if any(e.tenant.kind == "none" for e in endpoints):
        columns.append(NO_TENANT)
    return tuple(columns)


def principal_access(
    endpoint_map: EndpointMap,
    principal: Principal,
    roles: Mapping[str, Role],
    tenants: Sequence[Tenant],
) -> PrincipalAccess:
    """Every endpoint group ``principal`` can call on each of ``tenants``."""
    subject = Subject(principal, roles)
    by_group: dict[str, list[Endpoint]] = {}
    for endpoint in endpoint_map.endpoints:
        by_group.setdefault(endpoint_group(endpoint), []).append(endpoint)
    cells: dict[tuple[str, str], Cell] = {}
    for group, endpoints in by_group.items():
        tenanted = [e for e in endpoints if e.tenant.kind != "none"]
        untenanted = [e for e in endpoints if e.tenant.kind == "none"]
        for tenant in tenants if tenanted else ():
            allowed = tuple(e.id for e in tenanted if _allowed(endpoint_map, e, subject, tenant))
            cells[(group, tenant.id)] = Cell(allowed, len(tenanted))
        if untenanted:
            allowed = tuple(e.id for e in untenanted if _allowed(endpoint_map, e, subject, None))
            cells[(group, NO_TENANT)] = Cell(allowed, len(untenanted))
    return PrincipalAccess(
        principal, tuple(sorted(by_group)), _columns(endpoint_map.endpoints, tenants), cells
    )


def endpoint_access(
    endpoint_map: EndpointMap,
    endpoint: Endpoint,
    principals: Sequence[Principal],
    roles: Mapping[str, Role],
    tenants: Sequence[Tenant],
) -> EndpointAccess:
    """Everyone among ``principals`` who can call ``endpoint``, and on which tenants."""
    columns = (NO_TENANT,) if endpoint.tenant.kind == "none" else tuple(t.id for t in tenants)
    targets: Sequence[Tenant | None] = [None] if endpoint.tenant.kind == "none" else tenants
    allowed: dict[str, frozenset[str]] = {}
    for principal in principals:
        subject = Subject(principal, roles)
        reached = frozenset(
            NO_TENANT if tenant is None else tenant.id
            for tenant in targets
            if _allowed(endpoint_map, endpoint, subject, tenant)
        )
        if reached:
            allowed[principal.id] = reached
    return EndpointAccess(endpoint, columns, allowed)


@dataclass(frozen=True, slots=True)
class Unlock:
    """One permission of the map and the endpoints that require it."""

    permission: str
    endpoints: tuple[Endpoint, ...]


def permission_catalogue(maps: Sequence[EndpointMap]) -> dict[str, list[Unlock]]:
    """Every permission the maps require, by permission group, each with the endpoints
    it takes part in unlocking (an endpoint may need others too): the role picker."""
    needed: dict[str, list[Endpoint]] = {}
    for endpoint_map in maps:
        for endpoint in endpoint_map.endpoints:
            for permission in dict.fromkeys((*endpoint.permissions, *endpoint.any_of)):
                needed.setdefault(permission, []).append(endpoint)
    groups: dict[str, list[Unlock]] = {}
    for permission in sorted(needed):
        group = permission.partition(".")[0]
        groups.setdefault(group, []).append(Unlock(permission, tuple(needed[permission])))
    return dict(sorted(groups.items(), key=lambda item: item[0].lower()))
