"""The decision: a pure function from snapshots to allow or deny.

No I/O and no web types: the gateway, ``permgate explain``, ``permgate test`` and
the admin API's what-if all call :func:`decide` with data they fetched themselves.
Tenant scope is checked before permissions, and every denial carries one reason
from the closed set :class:`permgate.core.reasons.Reason` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Final

from permgate.core.model import SCOPE_ANY, SCOPE_TYPE_TEST, AuthToken, Principal, Role, Tenant
from permgate.core.permissions import EMPTY_GRANTS, GrantSet
from permgate.core.reasons import Reason
from permgate.core.roles import ADMIN, role_grants

if TYPE_CHECKING:
    from permgate.core.endpoints import Endpoint, EndpointMap, Match

__all__ = [
    "Decision",
    "Reason",
    "ScopeDetail",
    "Subject",
    "decide",
    "effective_grants",
    "is_admin",
    "missing_permissions",
    "resolve_tenant_id",
    "scope_allows",
    "scope_beyond",
]


class ScopeDetail(StrEnum):
    """What lies behind ``tenant_out_of_scope``: for the audit event, never the client,
    so that tenant names cannot be probed."""

    MISSING_TENANT = "missing_tenant"
    UNKNOWN_TENANT = "unknown_tenant"
    OTHER_ACCOUNT = "other_account"
    PRINCIPAL_SCOPE = "not_in_principal_scope"
    TOKEN_SCOPE = "not_in_token_scope"


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking: a principal, its account's roles, and the token used, if any."""

    principal: Principal
    roles: Mapping[str, Role]
    token: AuthToken | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome, with everything an audit event or a 403 body needs."""

    allowed: bool
    reason: Reason
    endpoint_id: str | None = None
    tenant: str | None = None
    required: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    detail: str = ""


def is_admin(principal: Principal) -> bool:
    """Whether the principal holds ``admin`` account-wide (its implicit tenant access)."""
    return any(a.role == ADMIN and a.tenant is None for a in principal.roles)


def effective_grants(
    principal: Principal, roles: Mapping[str, Role], tenant_id: str | None
) -> GrantSet:
    """Union of the account-wide roles and the roles held on ``tenant_id``: holding
    several roles gives the permissions of all of them.

    A role of another account never counts, even if a caller passes one in.
    """
    held: list[GrantSet] = []
    for assignment in principal.roles:
        if assignment.tenant is not None and assignment.tenant != tenant_id:
            continue
        role = roles.get(assignment.role)
        if role is None or role.account != principal.account:
            continue
        held.append(role_grants(role))
    if not held:
        return EMPTY_GRANTS
    return held[0] if len(held) == 1 else _union(tuple(held))


@lru_cache(maxsize=4096)
def _union(grant_sets: tuple[GrantSet, ...]) -> GrantSet:
    grants = EMPTY_GRANTS
    for grant_set in grant_sets:
        grants = grants.union(grant_set)
    return grants


def scope_allows(scope: Iterable[str], tenant: Tenant) -> bool:
    """Whether a tenant scope list (ids, ``any``, ``type:test``) reaches ``tenant``."""
    for item in scope:
        if item == tenant.id or item == SCOPE_ANY:
            return True
        if item == SCOPE_TYPE_TEST and tenant.type == "TEST":
            return True
    return False


def scope_beyond(
    held: Iterable[str], requested: Iterable[str], tenants: Mapping[str, Tenant]
) -> list[str]:
    """The items of a requested tenant scope that the ``held`` scope does not reach
    (``tenants``: the account's tenants by id, to read their type)."""
    held = frozenset(held)
    if SCOPE_ANY in held:
        return []
    test_too = SCOPE_TYPE_TEST in held
    beyond: list[str] = []
    for item in requested:
        if item == SCOPE_ANY:
            within = False
        elif item == SCOPE_TYPE_TEST:
            within = test_too
        else:
            tenant = tenants.get(item)
            within = item in held or (test_too and tenant is not None and tenant.type == "TEST")
        if not within:
            beyond.append(item)
    return beyond


def resolve_tenant_id(
    endpoint: Endpoint,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    claims: Mapping[str, object] | None,
) -> str | None:
    """Read the request's tenant from where the endpoint says it is."""
    source = endpoint.tenant
    if source.kind == "none" or source.name is None:
        return None
    if source.kind == "path_param":
        raw = params.get(source.name)
        if raw is None or "%" not in raw:  # _percent_decode's own test, without its frame
            return raw
        return _percent_decode(raw)
    if source.kind == "header":
        return headers.get(source.name) or None
    value = claims.get(source.name) if claims is not None else None
    return value if isinstance(value, str) and value else None


def _percent_decode(raw: str) -> str:
    if "%" not in raw:
        return raw
    from urllib.parse import unquote  # rare path: only encoded tenant segments

    return unquote(raw, errors="strict")


_UNMAPPED: Final = Decision(False, Reason.UNMAPPED_ROUTE)
_PASSTHROUGH: Final = Decision(True, Reason.UNMAPPED_PASSTHROUGH)


def decide(
    endpoint_map: EndpointMap,
    match: Match | None,
    subject: Subject | None,
    tenant: Tenant | None,
    tenant_id: str | None,
) -> Decision:
    """Decide one request, in this order: route (already done by the
    caller), public, authenticated, tenant in scope, permissions.

    Args:
        match: the routed endpoint, or None when no entry matched.
        subject: the authenticated caller; None only before authentication.
        tenant: the record of ``tenant_id`` in the store, or None if unknown.
        tenant_id: the tenant the request names (see :func:`resolve_tenant_id`).
    """
    if match is None:
        return _PASSTHROUGH if endpoint_map.unmapped == "passthrough" else _UNMAPPED
    endpoint = match.endpoint
    if endpoint.public:
        return Decision(True, Reason.PUBLIC, endpoint.id)
    if subject is None:
        return Decision(False, Reason.UNAUTHENTICATED, endpoint.id)
    principal = subject.principal

    scope_detail = _tenant_denial(endpoint, subject, tenant, tenant_id)
    if scope_detail is not None:
        return Decision(
            False,
            Reason.TENANT_OUT_OF_SCOPE,
            endpoint.id,
            tenant_id,
            endpoint.permissions,
            endpoint.any_of,
            detail=scope_detail,
        )

    scoped_tenant = tenant_id if endpoint.tenant.kind != "none" else None
    owner_grants = effective_grants(principal, subject.roles, scoped_tenant)
    token = subject.token
    token_grants = None if token is None else _token_grants(token, principal)
    read_actions = endpoint_map.read_actions

    def covered(permission: str) -> bool:
        if not owner_grants.covers(permission, read_actions):
            return False
        return token_grants is None or token_grants.covers(permission, read_actions)

    missing = missing_permissions(covered, endpoint.permissions, endpoint.any_of)
    if missing:
        return Decision(
            False,
            Reason.MISSING_PERMISSION,
            endpoint.id,
            scoped_tenant,
            endpoint.permissions,
            endpoint.any_of,
            tuple(missing),
        )
    return Decision(
        True, Reason.ALLOWED, endpoint.id, scoped_tenant, endpoint.permissions, endpoint.any_of
    )


def missing_permissions(
    covered: Callable[[str], bool], permissions: Sequence[str], any_of: Sequence[str]
) -> list[str]:
    """What a caller lacks for an endpoint: every permission of ``permissions`` that
    ``covered`` rejects and, when ``any_of`` is given and none of it is covered, all of
    ``any_of``. Empty means the permission step allows the request."""
    missing = [p for p in permissions if not covered(p)]
    if any_of and not any(covered(p) for p in any_of):
        missing.extend(p for p in any_of if p not in missing)
    return missing


def _tenant_denial(
    endpoint: Endpoint, subject: Subject, tenant: Tenant | None, tenant_id: str | None
) -> ScopeDetail | None:
    """Step 4: None when the tenant check passes, else why it failed."""
    if endpoint.tenant.kind == "none":
        return None
    if tenant_id is None:
        return ScopeDetail.MISSING_TENANT
    if tenant is None or tenant.id != tenant_id:
        return ScopeDetail.UNKNOWN_TENANT
    principal = subject.principal
    if tenant.account != principal.account:
        return ScopeDetail.OTHER_ACCOUNT
    if not (is_admin(principal) or scope_allows(principal.tenants, tenant)):
        return ScopeDetail.PRINCIPAL_SCOPE
    token = subject.token
    if token is not None and not scope_allows(token.tenants, tenant):
        return ScopeDetail.TOKEN_SCOPE
    return None


def _token_grants(token: AuthToken, principal: Principal) -> GrantSet:
    # A token holds grants, not roles: no read rule, no admin powers by name. A
    # token that is not the principal's own grants nothing (fail closed).
    if token.owner != principal.id or token.account != principal.account:
        return EMPTY_GRANTS
    return _compiled_grants(token.permissions)


@lru_cache(maxsize=4096)
def _compiled_grants(grants: tuple[str, ...]) -> GrantSet:
    return GrantSet.from_grants(grants)
