"""The access model's objects as immutable snapshots.

Every layer speaks in these: the store returns them, the decision reads them, the
admin API serialises them. They are frozen so a snapshot taken for a decision can
be cached without anyone changing it underneath the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

TenantType = Literal["PRODUCTION", "TEST"]
Enforcement = Literal["shadow", "enforce"]
PrincipalKind = Literal["user", "client"]

TENANT_TYPES: Final = ("PRODUCTION", "TEST")
ENFORCEMENTS: Final = ("shadow", "enforce")
PRINCIPAL_KINDS: Final = ("user", "client")

# Tenant scope items that are not tenant ids: every tenant of the account, and every
# TEST tenant of the account (both including tenants created later).
SCOPE_ANY: Final = "any"
SCOPE_TYPE_TEST: Final = "type:test"


@dataclass(frozen=True, slots=True)
class Account:
    """A business account: nothing ever crosses its boundary."""

    id: str


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant of an account; ``id`` is its locator as it appears in requests."""

    id: str
    account: str
    type: TenantType = "PRODUCTION"
    enforcement: Enforcement = "enforce"


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of grants. ``name`` and ``display_name`` never change."""

    account: str
    name: str
    display_name: str
    permissions: tuple[str, ...] = ()
    builtin: bool = False


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """A role held account-wide (``tenant`` None) or on one tenant only."""

    role: str
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """A user or a software client, with its roles and tenant scope."""

    id: str
    account: str
    kind: PrincipalKind = "user"
    roles: tuple[RoleAssignment, ...] = ()
    tenants: tuple[str, ...] = ()
    disabled: bool = False
    # Bearer JWTs issued (iat) before this instant are rejected: a forced logout.
    sessions_valid_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuthToken:
    """A personal access token: grants (not roles) and a tenant scope, never wider
    than its owner. The secret is never part of the snapshot, only its hash."""

    id: str
    owner: str
    account: str
    name: str
    permissions: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    secret_hash: bytes = field(default=b"", repr=False, compare=False)
    # The auth token whose caller created this one (None: created by a JWT session or
    # the local operator). Revoking a token revokes every token descended from it.
    parent_token_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in console session: whose it is, the auth token it was opened with
    (None for a password sign-in), its CSRF token and its lifetime. The session
    secret is never part of it; the store keeps only its hash."""

    principal_id: str
    token_id: str | None
    csrf: str = field(repr=False)
    created_at: datetime
    expires_at: datetime
