"""The one place that changes the access model, and so the one place that enforces
the rules for changing it. The admin API and every ``permgate`` command call it.

Each public method runs in one store write transaction that also writes an audit
row (who, what, before, after) and a change-log row, so a change, its audit record
and its announcement to every gateway commit together or not at all.
:meth:`ModelService.transaction` groups several calls into one transaction
(``permgate apply`` uses it so a policy file is applied whole or not at all).

Integrity rules bind everyone, the local operator (:meth:`Actor.cli`) included; the
"only admins" rules bind principals only. Nothing crosses an account: an object of
another account is reported as not found, never touched.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from permgate.core.decision import is_admin, scope_beyond
from permgate.core.errors import Conflict, Forbidden, InvalidInput, InvalidPermission, NotFound
from permgate.core.model import (
    ENFORCEMENTS,
    PRINCIPAL_KINDS,
    SCOPE_ANY,
    SCOPE_TYPE_TEST,
    TENANT_TYPES,
    AuthToken,
    ConsoleSession,
    Enforcement,
    Principal,
    PrincipalKind,
    Role,
    RoleAssignment,
    Tenant,
    TenantType,
)
from permgate.core.passwords import (
    FLOOR,
    MAX_SECONDS,
    LoginRefused,
    PasswordPolicy,
    PolicyViolation,
    broken_rules,
    dummy_verify,
    hash_password,
    needs_rehash,
    policy_from_json,
    verify_password,
)
from permgate.core.permissions import EMPTY_GRANTS, GrantSet, parse_grant
from permgate.core.roles import ADMIN, BUILTIN_ROLE_NAMES, builtin_roles, role_grants
from permgate.core.token_secrets import hash_secret, new_secret, new_token_id
from permgate.store.base import AuditRecord, Store
from permgate.store.sql import StoredPassword, StoredSession, Transaction

if TYPE_CHECKING:
    from permgate.config import Settings

__all__ = [
    "ACCOUNT_ID",
    "PRINCIPAL_ID",
    "ROLE_NAME",
    "TENANT_ID",
    "Actor",
    "ConsoleSession",
    "LoginRefused",
    "ModelService",
    "PasswordPolicy",
    "PolicyViolation",
    "admin_grants_refusal",
    "audit_event",
    "display_name_refusal",
    "enforcement_refusal",
    "operator_service",
    "owner_grants",
    "snapshot",
    "tenant_type_refusal",
]

# Tenant ids appear in URL paths; they may not look like a scope keyword.
TENANT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ACCOUNT_ID: Final = TENANT_ID
ROLE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Principal ids are what a JWT's principal claim names: e-mails, UUIDs, client ids,
# and SPIFFE ids (``spiffe://acme/svc-billing``), hence ``/``. Unique regardless of case.
PRINCIPAL_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+|/-]{0,254}")
_MAX_TEXT: Final = 200
DEFAULT_TOKEN_PREFIX: Final = "pgt_"
MAX_TOKEN_LIFETIME_SECONDS: Final = 10 * 366 * 24 * 3600
# A console session's last_seen_at is written at most this often (seconds).
_SESSION_TOUCH_EVERY: Final = 10.0
# How long failed sign-ins of an id nobody tried since are kept: past the longest
# lockout window a policy may configure.
_LOGIN_FAILURES_KEPT: Final = MAX_SECONDS + 86400
# What an audit event keeps of a principal id as given at sign-in (any text).
_MAX_LOGIN_ID: Final = 256


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change. ``kind`` "cli" is the trusted local operator: exempt
    from the admin-only rules, never from the integrity rules. ``token`` is the auth
    token the principal authenticated with (None for a JWT session or the operator):
    what it may create is capped by that token, not only by its owner."""

    principal_id: str | None
    account: str | None
    is_admin: bool
    kind: Literal["cli", "principal"]
    token: AuthToken | None = None

    @classmethod
    def cli(cls) -> Actor:
        """The operator running a ``permgate`` command against the store directly."""
        return cls(None, None, True, "cli")

    @classmethod
    def of(cls, principal: Principal, token: AuthToken | None = None) -> Actor:
        """An authenticated principal, with the auth token it authenticated by (if
        any); admin when it holds ``admin`` account-wide."""
        return cls(principal.id, principal.account, is_admin(principal), "principal", token)

    @property
    def name(self) -> str:
        """The audit record's ``actor``."""
        return "cli" if self.kind == "cli" else f"principal:{self.principal_id}"


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


def snapshot(obj: Tenant | Role | Principal | AuthToken | None) -> dict[str, object] | None:
    """An object as the audit's before/after JSON; a token without its hash."""
    if obj is None:
        return None
    if isinstance(obj, Principal):
        out: dict[str, object] = {
            "id": obj.id,
            "account": obj.account,
            "kind": obj.kind,
            "roles": [{"role": a.role, "tenant": a.tenant} for a in obj.roles],
            "tenants": list(obj.tenants),
            "disabled": obj.disabled,
            "sessions_valid_after": _jsonable(obj.sessions_valid_after),
        }
        return out
    names = [name for name in obj.__slots__ if name != "secret_hash"]
    return {name: _jsonable(getattr(obj, name)) for name in names}


@dataclass(slots=True)
class _Batch:
    tx: Transaction
    events: list[AuditRecord] = field(default_factory=list)


class ModelService:
    """Every change to tenants, roles, principals and tokens.

    Args:
        store: where the model lives.
        default_enforcement: the mode of tenants created without one.
        token_prefix: the prefix of new token secrets (``auth.token_prefix``).
        on_audit: called with each audit record after its transaction committed
            (``id`` 0: the store numbers rows); the durable record is the store's.
        clock: epoch seconds; tests pass a fixed one.
    """

    def __init__(
        self,
        store: Store,
        *,
        default_enforcement: Enforcement = "enforce",
        token_prefix: str = DEFAULT_TOKEN_PREFIX,
        on_audit: Callable[[AuditRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if default_enforcement not in ENFORCEMENTS:
            raise ValueError(f"default_enforcement must be one of {ENFORCEMENTS}")
        self.store = store
        self.default_enforcement: Enforcement = default_enforcement
        self.token_prefix = token_prefix
        self._on_audit = on_audit
        self._clock = clock
        self._current: ContextVar[_Batch | None] = ContextVar("permgate_batch", default=None)

    # -- transactions and audit ----------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One write transaction for every service call made inside the block.

        Calls nest: an inner call joins the outer transaction. Do not share one
        block between concurrently running tasks.
        """
        batch = self._current.get()
        if batch is not None:
            yield batch.tx
            return
        async with self.store.write() as tx:
            batch = _Batch(tx)
            token = self._current.set(batch)
            try:
                yield tx
            finally:
                self._current.reset(token)
        if self._on_audit is not None:
            for event in batch.events:
                self._on_audit(event)

    async def _audit(
        self,
        tx: Transaction,
        actor: Actor,
        account: str | None,
        action: str,
        target: str,
        before: object,
        after: object,
    ) -> None:
        now = self._clock()
        await tx.audit(
            ts=now,
            account=account,
            actor=actor.name,
            action=action,
            target=target,
            before=before,
            after=after,
        )
        batch = self._current.get()
        if batch is not None:
            batch.events.append(
                AuditRecord(0, now, account, actor.name, action, target, before, after)
            )

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- access checks ---------------------------------------------------------

    @staticmethod
    def may_manage_roles(actor: Actor) -> bool:
        """Roles, role assignments and the password policy are admins' business: the
        rule every caller meets (the console asks it to show or hide its forms)."""
        return actor.is_admin

    @classmethod
    def require_admin(cls, actor: Actor, what: str) -> None:
        """Forbidden (reason ``admin_required``) unless ``actor`` is an admin; a page
        that only shows a form asks it too, before any change is attempted."""
        if cls.may_manage_roles(actor):
            return
        who = f"; {actor.principal_id!r} does not hold the admin role" if actor.principal_id else ""
        raise Forbidden(f"only admins can {what}{who}", reason="admin_required")

    @staticmethod
    def _sees(actor: Actor, account: str) -> bool:
        return actor.account is None or actor.account == account

    async def _account(self, tx: Transaction, actor: Actor, account: str) -> None:
        if not self._sees(actor, account) or not await tx.account_exists(account):
            raise NotFound(f"account {account!r} not found")

    async def _principal(self, tx: Transaction, actor: Actor, principal_id: str) -> Principal:
        principal = await tx.get_principal(principal_id)
        if principal is None or not self._sees(actor, principal.account):
            raise NotFound(f"principal {principal_id!r} not found")
        return principal

    async def _tenant(self, tx: Transaction, actor: Actor, tenant_id: str) -> Tenant:
        tenant = await tx.get_tenant(tenant_id)
        if tenant is None or not self._sees(actor, tenant.account):
            raise NotFound(f"tenant {tenant_id!r} not found")
        return tenant

    async def _role(self, tx: Transaction, actor: Actor, account: str, name: str) -> Role:
        await self._account(tx, actor, account)
        role = await tx.get_role(account, name)
        if role is None:
            raise NotFound(f"role {name!r} not found in account {account!r}")
        return role

    # -- accounts and tenants --------------------------------------------------

    async def ensure_account(self, actor: Actor, account: str) -> bool:
        """Create ``account`` with the special and base roles unless it exists;
        True when it was created. Only the local operator creates accounts."""
        _check_id("account id", account, ACCOUNT_ID)
        async with self.transaction() as tx:
            if await tx.account_exists(account):
                if not self._sees(actor, account):
                    raise NotFound(f"account {account!r} not found")
                return False
            if actor.kind != "cli":
                raise Forbidden("only the local operator (bootstrap, apply) creates accounts")
            await tx.insert_account(account, self._clock())
            for role in builtin_roles(account):
                await tx.insert_role(role)
                tx.changed("role", account, role.name)
            tx.changed("account", account, None)
            await self._audit(tx, actor, account, "account.create", account, None, {"id": account})
            return True

    async def create_tenant(
        self,
        actor: Actor,
        account: str,
        tenant_id: str,
        *,
        type: TenantType = "PRODUCTION",
        enforcement: Enforcement | None = None,
    ) -> Tenant:
        """A new tenant; its mode is ``enforcement`` or the configured default."""
        _check_id("tenant id", tenant_id, TENANT_ID)
        if tenant_id == SCOPE_ANY:
            raise InvalidInput("tenant id 'any' is reserved: it is a tenant scope keyword")
        if type not in TENANT_TYPES:
            raise InvalidInput(f"tenant type {type!r} is invalid: expected one of {TENANT_TYPES}")
        mode = self.default_enforcement if enforcement is None else enforcement
        if mode not in ENFORCEMENTS:
            raise InvalidInput(f"enforcement {mode!r} is invalid: expected one of {ENFORCEMENTS}")
        if mode == "shadow" and enforcement is not None and not actor.is_admin:
            # Shadow forwards every deny, scope denies included: choosing it is an
            # admin's decision, not any tenants.write holder's.
            raise Forbidden("only admins can create a tenant in shadow mode (it forwards denies)")
        async with self.transaction() as tx:
            await self._account(tx, actor, account)
            # Unique regardless of case, in the whole deployment: an upstream comparing
            # locators case-insensitively must never see one tenant as another.
            _refuse_taken_id("tenant", tenant_id, await tx.tenant_id_folding_to(tenant_id))
            tenant = Tenant(tenant_id, account, type, mode)
            await tx.insert_tenant(tenant, self._clock())
            tx.changed("tenant", account, tenant_id)
            await self._audit(
                tx, actor, account, "tenant.create", tenant_id, None, snapshot(tenant)
            )
            return tenant

    async def set_enforcement(self, actor: Actor, tenant_id: str, enforcement: str) -> Tenant:
        """shadow -> enforce only; switching back is refused (409) and audited."""
        if enforcement not in ENFORCEMENTS:
            raise InvalidInput(
                f"enforcement {enforcement!r} is invalid: expected one of {ENFORCEMENTS}"
            )
        async with self.transaction() as tx:
            tenant = await self._tenant(tx, actor, tenant_id)
            if tenant.enforcement == enforcement:
                return tenant
            if enforcement == "enforce":
                after = replace(tenant, enforcement="enforce")
                await tx.set_enforcement(tenant_id, "enforce")
                tx.changed("tenant", tenant.account, tenant_id)
                await self._audit(
                    tx,
                    actor,
                    tenant.account,
                    "tenant.enforcement",
                    tenant_id,
                    snapshot(tenant),
                    snapshot(after),
                )
                return after
        # A refused switch back: audited in a transaction of its own, then refused.
        if self._current.get() is None:
            async with self.transaction() as tx:
                await self._audit(
                    tx,
                    actor,
                    tenant.account,
                    "tenant.enforcement.refused",
                    tenant_id,
                    snapshot(tenant),
                    {"requested": enforcement},
                )
        raise Conflict(
            enforcement_refusal(tenant_id, tenant.enforcement, enforcement)
            or f"tenant {tenant_id!r} cannot switch to {enforcement!r}"
        )

    # -- roles -------------------------------------------------------------------

    async def create_role(
        self,
        actor: Actor,
        account: str,
        name: str,
        display_name: str,
        permissions: Sequence[str],
    ) -> Role:
        """A new role of ``account``. Admins only."""
        self.require_admin(actor, "create roles")
        _check_id("role name", name, ROLE_NAME)
        _check_text("display_name", display_name)
        grants = _check_grants(permissions)
        async with self.transaction() as tx:
            await self._account(tx, actor, account)
            if await tx.get_role(account, name) is not None:
                raise Conflict(f"role {name!r} already exists in account {account!r}")
            role = Role(account, name, display_name, grants, builtin=False)
            await tx.insert_role(role)
            tx.changed("role", account, name)
            await self._audit(tx, actor, account, "role.create", name, None, snapshot(role))
            return role

    async def update_role(
        self,
        actor: Actor,
        account: str,
        name: str,
        *,
        permissions: Sequence[str] | None = None,
        display_name: str | None = None,
        new_name: str | None = None,
    ) -> Role:
        """Change a role's permissions; its name and display name never change.
        Admins only. ``display_name``/``new_name`` may be given only unchanged."""
        self.require_admin(actor, "update roles")
        if new_name is not None and new_name != name:
            raise InvalidInput(f"role name cannot change after creation (it is {name!r})")
        grants = None if permissions is None else _check_grants(permissions)
        async with self.transaction() as tx:
            role = await self._role(tx, actor, account, name)
            refusal = display_name_refusal(name, role.display_name, display_name)
            if refusal is not None:
                raise InvalidInput(refusal)
            if grants is None or grants == role.permissions:
                return role
            refusal = admin_grants_refusal(name, grants)
            if refusal is not None:
                raise InvalidInput(refusal)
            after = replace(role, permissions=grants)
            await tx.set_role_permissions(account, name, grants)
            tx.changed("role", account, name)
            await self._audit(
                tx, actor, account, "role.update", name, snapshot(role), snapshot(after)
            )
            return after

    async def delete_role(self, actor: Actor, account: str, name: str) -> Role:
        """Delete an unassigned, non-builtin role. Admins only."""
        self.require_admin(actor, "delete roles")
        async with self.transaction() as tx:
            role = await self._role(tx, actor, account, name)
            if role.builtin or name in BUILTIN_ROLE_NAMES:
                raise Conflict(f"role {name!r} is a base or special role and cannot be deleted")
            holders = await tx.role_holders(account, name)
            if holders:
                raise Conflict(
                    f"role {name!r} is assigned and cannot be deleted; held by: "
                    + ", ".join(holders)
                )
            await tx.delete_role(account, name)
            tx.changed("role", account, name)
            await self._audit(tx, actor, account, "role.delete", name, snapshot(role), None)
            return role

    # -- principals ----------------------------------------------------------------

    async def create_principal(
        self,
        actor: Actor,
        account: str,
        principal_id: str,
        *,
        kind: PrincipalKind = "user",
        tenants: Sequence[str] = (),
        disabled: bool = False,
        roles: Sequence[tuple[str, str | None]] = (),
    ) -> Principal:
        """A new user or client; giving it ``roles`` needs an admin."""
        _check_id("principal id", principal_id, PRINCIPAL_ID)
        _check_kind(kind)
        if roles:
            self.require_admin(actor, "assign roles")
        async with self.transaction() as tx:
            await self._account(tx, actor, account)
            # Unique regardless of case, in the whole deployment (as tenant ids): an
            # upstream or identity provider comparing ids case-insensitively must never
            # see one principal as another, least of all one of another account.
            taken = await tx.principal_id_folding_to(principal_id)
            _refuse_taken_id("principal", principal_id, taken)
            scope = await self._check_scope(tx, account, tenants)
            await self._within_own_scope(tx, actor, account, scope)
            assignments = await self._check_assignments(tx, account, roles)
            principal = Principal(
                principal_id, account, kind, assignments, scope, bool(disabled), None
            )
            await tx.insert_principal(principal)
            tx.changed("principal", account, principal_id)
            await self._audit(
                tx, actor, account, "principal.create", principal_id, None, snapshot(principal)
            )
            return principal

    async def update_principal(
        self,
        actor: Actor,
        principal_id: str,
        *,
        kind: PrincipalKind | None = None,
        disabled: bool | None = None,
    ) -> Principal:
        """Change a principal's kind or disabled flag."""
        if kind is not None:
            _check_kind(kind)
        async with self.transaction() as tx:
            before = await self._principal(tx, actor, principal_id)
            await self._may_manage_principal(tx, actor, before)
            after = replace(
                before,
                kind=before.kind if kind is None else kind,
                disabled=before.disabled if disabled is None else bool(disabled),
            )
            if after.disabled and not before.disabled:
                # Disabling logs the principal out: console sessions and older JWTs.
                after = replace(after, sessions_valid_after=self._now())
            return await self._store_principal(tx, actor, before, after, "principal.update")

    async def set_principal_roles(
        self,
        actor: Actor,
        principal_id: str,
        assignments: Iterable[tuple[str, str | None]],
    ) -> Principal:
        """Replace a principal's role assignments. Admins only. Removing any role also
        sets ``sessions_valid_after`` to now: its older JWTs stop working."""
        self.require_admin(actor, "assign roles")
        async with self.transaction() as tx:
            before = await self._principal(tx, actor, principal_id)
            wanted = await self._check_assignments(tx, before.account, list(assignments))
            after = replace(before, roles=wanted)
            if set(before.roles) - set(wanted):
                after = replace(after, sessions_valid_after=self._now())
            if after == before:
                return before
            await tx.set_assignments(principal_id, before.account, wanted)
            return await self._store_principal(tx, actor, before, after, "principal.roles")

    async def set_principal_tenants(
        self, actor: Actor, principal_id: str, tenants: Sequence[str]
    ) -> Principal:
        """Replace a principal's tenant scope (tenant ids, ``any``, ``type:test``)."""
        async with self.transaction() as tx:
            before = await self._principal(tx, actor, principal_id)
            scope = await self._check_scope(tx, before.account, tenants)
            await self._may_manage_principal(tx, actor, before, scope)
            after = replace(before, tenants=scope)
            return await self._store_principal(tx, actor, before, after, "principal.tenants")

    async def delete_principal(self, actor: Actor, principal_id: str) -> Principal:
        """Delete a principal with its assignments and tokens. Admins only, since it
        takes roles away."""
        self.require_admin(actor, "delete principals")
        async with self.transaction() as tx:
            before = await self._principal(tx, actor, principal_id)
            # Its tokens go with it; what they minted for other principals is revoked,
            # as if each token had been revoked.
            owned = await tx.list_tokens(owner=principal_id)
            await self._revoke_descendants(tx, actor, [t.id for t in owned])
            await tx.delete_principal(principal_id)
            tx.changed("principal", before.account, principal_id)
            await self._audit(
                tx, actor, before.account, "principal.delete", principal_id, snapshot(before), None
            )
            return before

    async def _store_principal(
        self, tx: Transaction, actor: Actor, before: Principal, after: Principal, action: str
    ) -> Principal:
        if after == before:
            return before
        await tx.update_principal(after)
        tx.changed("principal", after.account, after.id)
        await self._audit(
            tx, actor, after.account, action, after.id, snapshot(before), snapshot(after)
        )
        return after

    async def _check_assignments(
        self, tx: Transaction, account: str, items: Sequence[tuple[str, str | None]]
    ) -> tuple[RoleAssignment, ...]:
        roles = await tx.get_roles(account)
        problems: list[str] = []
        seen: dict[RoleAssignment, None] = {}
        for item in items:
            pair: object = item  # callers pass parsed JSON: check the shape anyway
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                problems.append(f"role assignment {pair!r} is not (role, tenant or null)")
                continue
            role, tenant_id = pair
            if not isinstance(role, str) or role not in roles:
                problems.append(f"role {role!r} does not exist in account {account!r}")
                continue
            if tenant_id is not None:
                tenant = await tx.get_tenant(tenant_id) if isinstance(tenant_id, str) else None
                if tenant is None or tenant.account != account:
                    problems.append(f"tenant {tenant_id!r} does not exist in account {account!r}")
                    continue
            seen[RoleAssignment(role, tenant_id)] = None
        if problems:
            raise InvalidInput("; ".join(problems))
        return tuple(sorted(seen, key=lambda a: (a.role, a.tenant or "")))

    async def _check_scope(
        self, tx: Transaction, account: str, items: Sequence[str]
    ) -> tuple[str, ...]:
        if isinstance(items, str):
            raise InvalidInput("tenants must be a list of tenant ids, 'any' or 'type:test'")
        problems: list[str] = []
        scope: dict[str, None] = {}
        for item in items:
            if item in (SCOPE_ANY, SCOPE_TYPE_TEST):
                scope[item] = None
                continue
            tenant = await tx.get_tenant(item) if isinstance(item, str) else None
            if tenant is None or tenant.account != account:
                problems.append(
                    f"tenant scope item {item!r} is neither 'any', 'type:test' nor a tenant "
                    f"of account {account!r}"
                )
                continue
            scope[item] = None
        if problems:
            raise InvalidInput("; ".join(problems))
        return tuple(scope)

    # -- passwords and native login -------------------------------------------

    async def password_policy(self, account: str) -> PasswordPolicy:
        """``account``'s effective password policy: its configured one with the floor
        applied, or the floor alone."""
        async with self.transaction() as tx:
            return policy_from_json(await tx.get_password_policy(account))

    async def configured_password_policy(self, account: str) -> PasswordPolicy | None:
        """``account``'s configured password policy (floor applied); None when it has
        none (then the floor alone applies)."""
        async with self.transaction() as tx:
            text = await tx.get_password_policy(account)
        return None if text is None else policy_from_json(text)

    async def set_password_policy(
        self, actor: Actor, account: str, policy: PasswordPolicy | None
    ) -> bool:
        """Configure ``account``'s password policy (None: back to the floor alone).
        Admins only; True when something changed."""
        self.require_admin(actor, "configure the password policy")
        wanted = None if policy is None else policy.with_floor()
        text = None if wanted is None else json.dumps(wanted.as_json(), sort_keys=True)
        async with self.transaction() as tx:
            await self._account(tx, actor, account)
            stored = await tx.get_password_policy(account)
            before = None if stored is None else policy_from_json(stored)
            if before == wanted:
                return False
            await tx.put_password_policy(account, text)
            tx.changed("account", account, None)
            await self._audit(
                tx,
                actor,
                account,
                "account.password_policy",
                account,
                None if before is None else before.as_json(),
                None if wanted is None else wanted.as_json(),
            )
            return True

    async def set_password(
        self,
        actor: Actor,
        principal_id: str,
        password: str,
        current_password: str | None = None,
    ) -> None:
        """Set a principal's password. One's own needs ``current_password`` when one
        is set; someone else's needs an admin (or a ``principals.write`` holder, under
        the same rules as other changes to a principal). A password the policy refuses
        raises :class:`PolicyViolation` naming every rule it breaks. Setting a password
        ends the principal's console sessions and older JWTs."""
        if not isinstance(password, str):
            raise InvalidInput("password must be a string")
        if current_password is not None and not isinstance(current_password, str):
            raise InvalidInput("current_password must be a string")
        async with self.transaction() as tx:
            target = await self._principal(tx, actor, principal_id)
            own = actor.kind == "principal" and actor.principal_id == target.id
            if not own:
                await self._may_manage_principal(tx, actor, target)
                await self._within_own_power(tx, actor, target)
            stored = await tx.get_password(target.id)
            policy = policy_from_json(await tx.get_password_policy(target.account))
            _, locked_until = await tx.get_login_failures(target.id.casefold())
        # The slow part (Argon2id) runs outside the store's write lock.
        if own and stored is not None:
            if current_password is None:
                raise Forbidden("current_password is required to change one's own password")
            if locked_until is not None and locked_until > self._clock():
                raise Forbidden(
                    f"sign-in for {target.id!r} is locked after too many failed attempts; "
                    "try again later"
                )
            if not await verify_password(stored.hash, current_password):
                # A wrong current password is a failed sign-in: the lockout bounds
                # guessing through this door too.
                async with self.transaction() as tx:
                    await self._record_failure(tx, target.id.casefold(), policy, self._clock())
                raise Forbidden("current_password does not match the password set")
        broken = broken_rules(password, target.id, policy)
        if stored is not None and policy.history:
            recent = (stored.hash, *stored.previous)[: policy.history]
            for old in recent:
                if await verify_password(old, password):
                    broken.append(
                        (
                            "history",
                            f"it is one of the last {policy.history} passwords of {target.id!r}",
                        )
                    )
                    break
        if broken:
            raise PolicyViolation(broken)
        new_hash = await hash_password(password)
        async with self.transaction() as tx:
            before = await self._principal(tx, actor, principal_id)
            current = await tx.get_password(before.id)
            if current != stored:
                raise Conflict(f"the password of {principal_id!r} changed meanwhile; try again")
            previous: tuple[str, ...] = ()
            if current is not None and policy.history > 1:
                previous = (current.hash, *current.previous)[: policy.history - 1]
            await tx.put_password(before.id, StoredPassword(new_hash, self._clock(), previous))
            after = replace(before, sessions_valid_after=self._now())
            await tx.update_principal(after)
            tx.changed("principal", after.account, after.id)
            # The audit says a password was set, by whom; never any hash or password.
            await self._audit(
                tx,
                actor,
                after.account,
                "principal.password",
                after.id,
                snapshot(before),
                snapshot(after),
            )

    async def _record_failure(
        self, tx: Transaction, login: str, policy: PasswordPolicy, now: float
    ) -> None:
        lockout = policy.lockout
        failures, locked_until = await tx.get_login_failures(login)
        recent = [t for t in failures if t > now - lockout.window_seconds] + [now]
        if len(recent) >= lockout.attempts:
            locked_until = now + lockout.lock_seconds
        await tx.put_login_failures(login, recent, locked_until, now)

    async def _within_own_power(self, tx: Transaction, actor: Actor, target: Principal) -> None:
        """Whoever sets a password can sign in with it: a non-admin may do so only for
        a principal holding nothing it does not hold itself, on no tenant it does not
        reach, or ``principals.write`` would buy any other principal's power."""
        if actor.kind == "cli" or actor.is_admin or actor.principal_id is None:
            return
        me = await tx.get_principal(actor.principal_id)
        roles = await tx.get_roles(target.account)
        theirs = [p for a in target.roles if a.role in roles for p in roles[a.role].permissions]
        tenants_by_id = {t.id: t for t in await tx.list_tenants(target.account)}
        if me is None:
            raise Forbidden(f"cannot set the password of {target.id!r}")
        beyond = owner_grants(me, roles).beyond(theirs)
        outside = _exceeding_tenants(target.tenants, me, tenants_by_id)
        if beyond or outside:
            parts = []
            if beyond:
                parts.append("permissions you do not hold: " + ", ".join(beyond))
            if outside:
                parts.append("tenants beyond your scope: " + ", ".join(outside))
            raise Forbidden(
                f"cannot set the password of {target.id!r}, who holds "
                + "; ".join(parts)
                + " (only an admin can)"
            )

    async def has_password(self, principal_id: str) -> bool:
        """True when the principal has a password set (it can sign in natively)."""
        async with self.transaction() as tx:
            return await tx.get_password(principal_id) is not None

    async def verify_login(
        self, principal_id: str, password: str, *, client_ip: str | None
    ) -> Principal:
        """The principal signing in with ``password``, or :class:`LoginRefused`.

        An unknown principal, one without a password and a wrong password are all
        ``bad_credentials`` and take as long (a dummy hash is verified). Failed
        sign-ins within the account's lockout window lock sign-in (``locked``) for
        the lock time, for unknown ids too, so the answer tells nothing about which
        ids exist. ``disabled`` and ``expired_password`` are told only after the
        right password. Every attempt is audited as ``auth.login``, never with the
        password.
        """
        given = principal_id if isinstance(principal_id, str) else ""
        login = given.casefold()[:_MAX_LOGIN_ID]
        password = password if isinstance(password, str) else ""
        now = self._clock()
        # Refusals are raised after their transaction commits, so that the failure
        # count and the audit record are kept, not rolled back with the exception.
        refusal: LoginRefused | None = None
        async with self.transaction() as tx:
            principal = await tx.get_principal(given) if given else None
            if principal is None and given:
                # Ids are unique regardless of case: sign in as typed.
                folded = await tx.principal_id_folding_to(given)
                principal = None if folded is None else await tx.get_principal(folded)
            account = None if principal is None else principal.account
            policy = (
                FLOOR
                if account is None
                else policy_from_json(await tx.get_password_policy(account))
            )
            stored = None if principal is None else await tx.get_password(principal.id)
            lockout = policy.lockout
            failures, locked_until = await tx.get_login_failures(login)
            recent = [t for t in failures if t > now - lockout.window_seconds]
            if locked_until is None or locked_until <= now:
                if len(recent) >= lockout.attempts:
                    # Attempts still in flight count: a burst cannot outrun the lockout.
                    await tx.put_login_failures(login, recent, now + lockout.lock_seconds, now)
                    refusal = LoginRefused("locked")
                else:
                    # Counted as a failure until it succeeds (fail closed under
                    # concurrency).
                    await tx.put_login_failures(login, [*recent, now], None, now)
                    # Forget what no window can still count (the longest is a week).
                    await tx.prune_login_failures(now - _LOGIN_FAILURES_KEPT)
            else:
                refusal = LoginRefused("locked")
            if refusal is not None:
                await self._audit_login(tx, account, given, "refused", "locked", client_ip)
        if refusal is not None:
            raise refusal
        if stored is None:
            await dummy_verify(password)
            ok = False
        else:
            ok = await verify_password(stored.hash, password)
        async with self.transaction() as tx:
            result = await self._login_outcome(tx, login, ok, principal, stored, policy, now)
            if isinstance(result, LoginRefused):
                await self._audit_login(tx, account, given, "refused", result.reason, client_ip)
            else:
                await self._audit_login(tx, account, given, "ok", None, client_ip)
        if isinstance(result, LoginRefused):
            raise result
        if stored is not None and needs_rehash(stored.hash):
            await self._rehash(result.id, stored, password)
        return result

    async def _rehash(self, principal_id: str, stored: StoredPassword, password: str) -> None:
        """Re-hash a password made with older Argon2id parameters, now that it is known
        to be right, unless it changed meanwhile; its set_at and history stay."""
        new_hash = await hash_password(password)
        async with self.transaction() as tx:
            if await tx.get_password(principal_id) == stored:
                await tx.put_password(
                    principal_id, StoredPassword(new_hash, stored.set_at, stored.previous)
                )

    async def _login_outcome(
        self,
        tx: Transaction,
        login: str,
        ok: bool,
        principal: Principal | None,
        stored: StoredPassword | None,
        policy: PasswordPolicy,
        started: float,
    ) -> Principal | LoginRefused:
        """After the password was checked: record the failure (locking when it is one
        too many) or clear the failures, and tell what the caller may know."""
        lockout = policy.lockout
        failures, locked_until = await tx.get_login_failures(login)
        if not ok or principal is None or stored is None:
            recent = [t for t in failures if t > started - lockout.window_seconds]
            if len(recent) >= lockout.attempts:
                locked_until = started + lockout.lock_seconds
            await tx.put_login_failures(login, recent, locked_until, self._clock())
            return LoginRefused("bad_credentials")
        await tx.put_login_failures(login, [], None, self._clock())
        current = await tx.get_principal(principal.id)
        if current is None:
            return LoginRefused("bad_credentials")
        if current.disabled:
            return LoginRefused("disabled", current.id)
        if (
            policy.max_age_days is not None
            and stored.set_at + policy.max_age_days * 86400 <= started
        ):
            return LoginRefused("expired_password", current.id)
        return current

    async def _audit_login(
        self,
        tx: Transaction,
        account: str | None,
        given: str,
        result: str,
        reason: str | None,
        client_ip: str | None,
    ) -> None:
        shown = given[:_MAX_LOGIN_ID]
        actor = Actor(shown, account, False, "principal")
        await self._audit(
            tx,
            actor,
            account,
            "auth.login",
            shown,
            None,
            {"result": result, "reason": reason, "principal": shown, "client_ip": client_ip},
        )

    async def audit_token_login(
        self, token_id: str | None, result: str, reason: str | None, *, client_ip: str | None
    ) -> None:
        """Audit a console sign-in with an auth token as ``auth.login``, as password
        sign-ins are: the token's id (read from its secret; None when it names none),
        its owner and account when the token exists, the result and the reason, never
        the secret."""
        async with self.transaction() as tx:
            token = await tx.get_token(token_id) if token_id else None
            account = None if token is None else token.account
            owner = None if token is None else token.owner
            target = token_id or "(no token id)"
            actor = Actor(owner or target, account, False, "principal")
            await self._audit(
                tx,
                actor,
                account,
                "auth.login",
                target,
                None,
                {
                    "result": result,
                    "reason": reason,
                    "principal": owner,
                    "token": token_id,
                    "client_ip": client_ip,
                },
            )

    # -- console sessions ------------------------------------------------------

    async def create_console_session(
        self,
        principal_id: str,
        *,
        token_id: str | None,
        idle_seconds: int,
        absolute_seconds: int,
    ) -> tuple[str, str]:
        """A new console session for a principal that has just signed in; returns
        (session secret, CSRF token). Only the secret's SHA-256 is stored."""
        if idle_seconds <= 0 or absolute_seconds <= 0:
            raise InvalidInput("a console session needs positive idle and absolute timeouts")
        session_secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self._clock()
        async with self.transaction() as tx:
            principal = await tx.get_principal(principal_id)
            if principal is None or principal.disabled:
                raise NotFound(f"principal {principal_id!r} not found or disabled")
            await tx.insert_console_session(
                StoredSession(
                    id_hash=_session_hash(session_secret),
                    principal_id=principal.id,
                    token_id=token_id,
                    csrf=csrf,
                    created_at=now,
                    last_seen_at=now,
                    idle_seconds=float(idle_seconds),
                    expires_at=now + absolute_seconds,
                )
            )
            await tx.prune_console_sessions(now - 86400)
        return session_secret, csrf

    async def console_session(self, session_secret: str) -> ConsoleSession | None:
        """The live session ``session_secret`` opens, or None when it is unknown,
        ended, idle too long, past its lifetime, older than its principal's
        ``sessions_valid_after``, its principal is disabled or gone, or the auth token
        it was opened with is revoked or expired."""
        if not isinstance(session_secret, str) or not session_secret:
            return None
        id_hash = _session_hash(session_secret)
        now = self._clock()
        async with self.transaction() as tx:
            row = await tx.get_console_session(id_hash)
            if row is None or not await self._session_alive(tx, row, now):
                return None
            if now - row.last_seen_at >= _SESSION_TOUCH_EVERY:
                await tx.touch_console_session(id_hash, now)
            return ConsoleSession(
                principal_id=row.principal_id,
                token_id=row.token_id,
                csrf=row.csrf,
                created_at=datetime.fromtimestamp(row.created_at, UTC),
                expires_at=datetime.fromtimestamp(row.expires_at, UTC),
            )

    async def _session_alive(self, tx: Transaction, row: StoredSession, now: float) -> bool:
        if row.ended_at is not None or now >= row.expires_at:
            return False
        if now - row.last_seen_at >= row.idle_seconds:
            return False
        principal = await tx.get_principal(row.principal_id)
        if principal is None or principal.disabled:
            return False
        valid_after = principal.sessions_valid_after
        if valid_after is not None and row.created_at < valid_after.timestamp():
            return False
        if row.token_id is not None:
            token = await tx.get_token(row.token_id)
            if (
                token is None
                or token.owner != principal.id
                or token.revoked_at is not None
                or (token.expires_at is not None and token.expires_at.timestamp() <= now)
            ):
                return False
        return True

    async def end_console_session(self, session_secret: str) -> None:
        """Sign out: the session ends on the server (unknown secrets are ignored)."""
        if not isinstance(session_secret, str) or not session_secret:
            return
        async with self.transaction() as tx:
            await tx.end_console_session(_session_hash(session_secret), self._clock())

    # -- tokens ----------------------------------------------------------------

    async def create_token(
        self,
        actor: Actor,
        owner: str,
        name: str,
        permissions: Sequence[str],
        tenants: Sequence[str],
        expires_in: float | None = None,
    ) -> tuple[AuthToken, str]:
        """A new auth token and its secret (shown once; only the hash is stored).

        Its grants and tenants never exceed what the owner holds now, and when the
        actor authenticated with an auth token, never exceed that token either: not
        in grants, not in tenants, not in lifetime (it expires no later than the
        calling token; a calling token that never expires imposes no limit). Every
        excess is listed in one 422. The new token records the calling token as its
        parent: revoking the parent revokes it.
        """
        _check_text("token name", name)
        grants = _check_grants(permissions)
        if not grants:
            raise InvalidInput("a token needs at least one permission")
        if expires_in is not None and (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or not 0 < expires_in <= MAX_TOKEN_LIFETIME_SECONDS
        ):
            raise InvalidInput(
                f"expires_in {expires_in!r} must be a number of seconds from 1 to "
                f"{MAX_TOKEN_LIFETIME_SECONDS} (ten years); omit it for a token that never expires"
            )
        async with self.transaction() as tx:
            principal = await self._principal(tx, actor, owner)
            self._may_manage_tokens(actor, principal)
            if principal.disabled:
                raise InvalidInput(f"principal {owner!r} is disabled and cannot own a new token")
            scope = await self._check_scope(tx, principal.account, tenants)
            roles = await tx.get_roles(principal.account)
            tenants_by_id = {t.id: t for t in await tx.list_tenants(principal.account)}
            too_wide = _exceeding_grants(grants, principal, roles)
            outside = _exceeding_tenants(scope, principal, tenants_by_id)
            if too_wide or outside:
                parts = []
                if too_wide:
                    parts.append("permissions the owner does not hold: " + ", ".join(too_wide))
                if outside:
                    parts.append("tenants outside the owner's scope: " + ", ".join(outside))
                raise InvalidInput(
                    f"the token would exceed its owner {owner!r}: " + "; ".join(parts)
                )
            now = self._now()
            expires_at = None if expires_in is None else now + timedelta(seconds=expires_in)
            parent = await self._calling_token(tx, actor, now)
            if parent is not None:
                _within_calling_token(parent, grants, scope, tenants_by_id, now, expires_at)
            token_id = new_token_id()
            secret = new_secret(self.token_prefix, token_id)
            token = AuthToken(
                id=token_id,
                owner=owner,
                account=principal.account,
                name=name,
                permissions=grants,
                tenants=scope,
                created_at=now,
                expires_at=expires_at,
                secret_hash=hash_secret(secret),
                parent_token_id=None if parent is None else parent.id,
            )
            await tx.insert_token(token)
            tx.changed("token", principal.account, token_id)
            await self._audit(
                tx, actor, principal.account, "token.create", token_id, None, snapshot(token)
            )
            return token, secret

    async def _calling_token(
        self, tx: Transaction, actor: Actor, now: datetime
    ) -> AuthToken | None:
        """The actor's auth token as the store holds it now. Read inside the write
        transaction, so a token revoked a moment ago cannot mint one that escapes the
        revocation of its descendants."""
        if actor.token is None:
            return None
        current = await tx.get_token(actor.token.id)
        if (
            current is None
            or current.revoked_at is not None
            or (current.expires_at is not None and current.expires_at <= now)
        ):
            raise Conflict(
                f"the auth token {actor.token.id!r} used for this call was revoked or expired "
                "meanwhile: it can no longer create tokens"
            )
        return current

    async def revoke_token(self, actor: Actor, token_id: str) -> AuthToken:
        """Revoke a token and every token descended from it; see :meth:`revoke_lineage`."""
        token, _ = await self.revoke_lineage(actor, token_id)
        return token

    async def revoke_lineage(
        self, actor: Actor, token_id: str
    ) -> tuple[AuthToken, list[AuthToken]]:
        """Revoke a token and every token descended from it (created by a caller
        authenticated with it, or with one of those, ...): a leaked token is contained
        with everything it minted. Returns the token and the descendants this call
        revoked. Revoking a revoked token changes nothing more."""
        async with self.transaction() as tx:
            token = await tx.get_token(token_id)
            if token is None or not self._sees(actor, token.account):
                raise NotFound(f"token {token_id!r} not found")
            owner = await tx.get_principal(token.owner)
            if owner is not None:
                self._may_manage_tokens(actor, owner)
            after = token
            if token.revoked_at is None:
                after = replace(token, revoked_at=self._now())
                await tx.revoke_token(token_id, self._clock())
                tx.changed("token", token.account, token_id)
                await self._audit(
                    tx,
                    actor,
                    token.account,
                    "token.revoke",
                    token_id,
                    snapshot(token),
                    snapshot(after),
                )
            return after, await self._revoke_descendants(tx, actor, [token_id])

    async def _revoke_descendants(
        self, tx: Transaction, actor: Actor, roots: Sequence[str]
    ) -> list[AuthToken]:
        """Revoke every unrevoked token descended from ``roots``, whoever owns it (its
        authority came from the root), each audited as ``token.revoke.cascade``;
        returns them, revoked."""
        revoked: list[AuthToken] = []
        pending = list(roots)
        seen = set(pending)
        while pending:
            for child in await tx.child_tokens(pending.pop()):
                if child.id in seen:
                    continue
                seen.add(child.id)
                pending.append(child.id)
                if child.revoked_at is not None:
                    continue
                after = replace(child, revoked_at=self._now())
                await tx.revoke_token(child.id, self._clock())
                tx.changed("token", child.account, child.id)
                await self._audit(
                    tx,
                    actor,
                    child.account,
                    "token.revoke.cascade",
                    child.id,
                    snapshot(child),
                    snapshot(after),
                )
                revoked.append(after)
        return revoked

    async def _may_manage_principal(
        self,
        tx: Transaction,
        actor: Actor,
        target: Principal,
        scope: Sequence[str] | None = None,
    ) -> None:
        """A non-admin holding ``principals.write`` must not escalate through it: it
        cannot change itself or an admin, nor hand out tenants it does not reach."""
        if actor.kind == "cli" or actor.is_admin:
            return
        if target.id == actor.principal_id:
            raise Forbidden("a principal cannot change its own status or tenant scope")
        if is_admin(target):
            raise Forbidden(f"only admins can change {target.id!r}, an admin")
        if scope is not None:
            await self._within_own_scope(tx, actor, target.account, scope)

    async def _within_own_scope(
        self, tx: Transaction, actor: Actor, account: str, scope: Sequence[str]
    ) -> None:
        """A non-admin cannot hand out tenants it does not reach itself (giving a new
        principal a scope is setting one)."""
        if actor.kind == "cli" or actor.is_admin or actor.principal_id is None or not scope:
            return
        me = await tx.get_principal(actor.principal_id)
        tenants_by_id = {t.id: t for t in await tx.list_tenants(account)}
        outside = list(scope) if me is None else _exceeding_tenants(scope, me, tenants_by_id)
        if outside:
            raise Forbidden(f"cannot grant tenants beyond your own scope: {', '.join(outside)}")

    @staticmethod
    def _manages_tokens_of(actor: Actor, owner: Principal) -> bool:
        """A principal manages its own tokens; an admin those of its account."""
        if actor.kind == "cli" or actor.principal_id == owner.id:
            return True
        return actor.is_admin and actor.account == owner.account

    def _may_manage_tokens(self, actor: Actor, owner: Principal, what: str = "manage") -> None:
        if not self._manages_tokens_of(actor, owner):
            raise Forbidden(
                f"only {owner.id!r} itself or an admin can {what} its tokens",
                reason="not_token_owner",
            )

    async def visible_tokens(self, actor: Actor, owner: str | None = None) -> list[AuthToken]:
        """The tokens ``actor`` may see: ``owner``'s (its own, or, for an admin, any
        principal's of its account), or with no owner its own (an admin: the account's).
        Another account's principal is not found; another's tokens for a non-admin are
        Forbidden (reason ``not_token_owner``)."""
        if owner is not None and owner != actor.principal_id:
            principal = await self.store.get_principal(owner)
            if principal is None or not self._sees(actor, principal.account):
                raise NotFound(f"principal {owner!r} not found")
            self._may_manage_tokens(actor, principal, "see")
            return await self.store.list_tokens(owner=owner)
        if owner is None and actor.is_admin and actor.account is not None:
            return await self.store.list_tokens(account=actor.account)
        return await self.store.list_tokens(owner=owner or actor.principal_id)

    async def visible_token(self, actor: Actor, token_id: str) -> AuthToken | None:
        """The token if ``actor`` may see it (its own, or an admin's account's), else None."""
        token = await self.store.get_token(token_id)
        if token is None or not self._sees(actor, token.account):
            return None
        owner = await self.store.get_principal(token.owner)
        if owner is None or not self._manages_tokens_of(actor, owner):
            return None
        return token

    async def token_owners(self, actor: Actor) -> list[str]:
        """Whom ``actor`` may create tokens for: itself, or, for an admin, any
        principal of its account."""
        if actor.is_admin and actor.account is not None:
            return [p.id for p in await self.store.list_principals(actor.account)]
        return [] if actor.principal_id is None else [actor.principal_id]


def _session_hash(session_secret: str) -> str:
    return hashlib.sha256(session_secret.encode("utf-8", "surrogatepass")).hexdigest()


# The rules a change to a stored object meets, as pure functions: the service raises
# their message, and ``permgate apply`` reports it on the file's line before writing.


def enforcement_refusal(tenant_id: str, current: str, wanted: str) -> str | None:
    """Why ``current`` enforcement cannot become ``wanted``: it is one-way."""
    if current == "enforce" and wanted == "shadow":
        return (
            f"tenant {tenant_id!r} is in enforce mode; switching back to shadow is refused "
            "(enforcement is one-way)"
        )
    return None


def tenant_type_refusal(tenant_id: str, current: str, wanted: str) -> str | None:
    """Why a tenant's type cannot become ``wanted``: it never changes."""
    if current != wanted:
        return f"tenant {tenant_id!r} is of type {current}; a tenant's type cannot change"
    return None


def display_name_refusal(name: str, current: str, wanted: str | None) -> str | None:
    """Why a role's display name cannot become ``wanted``: it is fixed at creation."""
    if wanted is not None and wanted != current:
        return f"display_name of role {name!r} cannot change after creation (it is {current!r})"
    return None


def admin_grants_refusal(name: str, grants: Sequence[str]) -> str | None:
    """Why a role cannot have ``grants``: the admin role keeps ``*.*``."""
    if name == ADMIN and "*.*" not in grants:
        return "the admin role's '*.*' cannot be removed"
    return None


def _refuse_taken_id(what: str, wanted: str, taken: str | None) -> None:
    """409 when ``wanted`` is taken, naming the stored spelling when only case differs."""
    if taken is None:
        return
    same = "" if taken == wanted else f" (as {taken!r}: ids are unique regardless of case)"
    raise Conflict(f"{what} id {wanted!r} is already taken{same}")


def _check_id(what: str, value: object, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidInput(
            f"{what} {value!r} is invalid: expected {pattern.pattern} (letters, digits and "
            "a few punctuation characters, starting with a letter or digit)"
        )


def _check_text(what: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise InvalidInput(f"{what} {value!r} must be non-empty text of at most {_MAX_TEXT} chars")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        # A line break forges log lines; PostgreSQL cannot store a NUL at all.
        raise InvalidInput(f"{what} {value!r} must not contain control characters")


def _check_kind(kind: object) -> None:
    if kind not in PRINCIPAL_KINDS:
        raise InvalidInput(f"principal kind {kind!r} is invalid: expected one of {PRINCIPAL_KINDS}")


def _check_grants(grants: Sequence[str]) -> tuple[str, ...]:
    """Every grant validated; all the bad ones reported together."""
    if isinstance(grants, str):
        raise InvalidInput("permissions must be a list of grants, not one string")
    problems: list[str] = []
    unique: dict[str, None] = {}
    for grant in grants:
        try:
            parse_grant(grant)
        except InvalidPermission as exc:
            problems.append(str(exc))
            continue
        unique[grant] = None
    if problems:
        raise InvalidInput("; ".join(problems))
    return tuple(unique)


def owner_grants(owner: Principal, roles: dict[str, Role]) -> GrantSet:
    """Everything an owner holds anywhere: account-wide and on any tenant."""
    grants = EMPTY_GRANTS
    for assignment in owner.roles:
        role = roles.get(assignment.role)
        if role is not None and role.account == owner.account:
            grants = grants.union(role_grants(role))
    return grants


def _exceeding_grants(grants: Sequence[str], owner: Principal, roles: dict[str, Role]) -> list[str]:
    return owner_grants(owner, roles).beyond(grants)


def _exceeding_tenants(
    scope: Sequence[str], owner: Principal, tenants: dict[str, Tenant]
) -> list[str]:
    return [] if is_admin(owner) else scope_beyond(owner.tenants, scope, tenants)


def _within_calling_token(
    parent: AuthToken,
    grants: Sequence[str],
    scope: Sequence[str],
    tenants: dict[str, Tenant],
    now: datetime,
    expires_at: datetime | None,
) -> None:
    """A caller authenticated by an auth token cannot create a token wider than that
    token: otherwise a narrow or short-lived token holding ``authTokens.write`` would
    buy its owner's full power, or a permanent credential."""
    parts = []
    too_wide = GrantSet.from_grants(parent.permissions).beyond(grants)
    if too_wide:
        parts.append("permissions it does not grant: " + ", ".join(too_wide))
    outside = scope_beyond(parent.tenants, scope, tenants)
    if outside:
        parts.append("tenants outside its scope: " + ", ".join(outside))
    if parent.expires_at is not None and (expires_at is None or expires_at > parent.expires_at):
        left = max(1, int((parent.expires_at - now).total_seconds()))
        asked = "no expiry" if expires_at is None else f"an expiry at {_iso(expires_at)}"
        parts.append(
            f"{asked}, later than its own ({_iso(parent.expires_at)}): give expires_in "
            f"of at most {left} seconds"
        )
    if parts:
        raise InvalidInput(
            f"the new token would exceed the auth token {parent.id!r} used for this call: "
            + "; ".join(parts)
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def audit_event(record: AuditRecord) -> dict[str, object]:
    """An audit record as an audit event: ``auth.login`` for a sign-in (result,
    reason, principal as given, client address), ``enforcement.change`` for a tenant's
    mode (both the switch and a refused switch back), ``admin.change`` for the rest."""
    if record.action == "auth.login" and isinstance(record.after, dict):
        return {
            "ts": datetime.fromtimestamp(record.ts, UTC).isoformat().replace("+00:00", "Z"),
            "event": "auth.login",
            "account": record.account,
            **record.after,
        }
    kind = (
        "enforcement.change" if record.action.startswith("tenant.enforcement") else "admin.change"
    )
    return {
        "ts": datetime.fromtimestamp(record.ts, UTC).isoformat().replace("+00:00", "Z"),
        "event": kind,
        "account": record.account,
        "actor": record.actor,
        "action": record.action,
        "target": record.target,
        "before": record.before,
        "after": record.after,
    }


def _cli_audit_sink(sink: str) -> Callable[[AuditRecord], None]:
    """Where a command's audit events go: a ``stdout`` sink means stderr for commands
    (stdout is for their output), ``file:PATH`` appends JSON lines."""
    import sys

    import orjson

    def write(record: AuditRecord) -> None:
        line = orjson.dumps(audit_event(record)) + b"\n"
        if sink.startswith("file:"):
            with open(sink[len("file:") :], "ab") as out:
                out.write(line)
        else:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()

    return write


@asynccontextmanager
async def operator_service(settings: Settings) -> AsyncIterator[ModelService]:
    """The service as a ``permgate`` command uses it: the configured store, default
    enforcement, token prefix and audit sink; the store is closed afterwards."""
    from permgate.store import open_store

    store = await open_store(settings.store)
    try:
        yield ModelService(
            store,
            default_enforcement=settings.default_enforcement,
            token_prefix=settings.auth.token_prefix,
            on_audit=_cli_audit_sink(settings.audit.sink),
        )
    finally:
        await store.close()
