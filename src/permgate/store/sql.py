"""The SQL both backends share: row mapping, reads, writes and the change log.

Statements are written once with PostgreSQL's ``$1`` placeholders; the SQLite
connection rewrites them to ``?1``. Lists (grants, tenant scopes) are stored as
JSON text and instants as epoch seconds, so both dialects hold the same values.

A :class:`Transaction` is handed out by a backend: for reads (one consistent
snapshot) or, through ``Store.write()``, for the service's changes. Write
transactions are serialised store-wide (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a
transaction-level advisory lock), so change-log versions are handed out in commit
order without gaps and a watcher never skips one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from permgate.core.model import AuthToken, Principal, Role, RoleAssignment, Tenant
from permgate.store.base import AuditRecord, Change, ChangeKind

__all__ = [
    "Connection",
    "StoredPassword",
    "StoredSession",
    "Transaction",
    "UsageRow",
    "from_epoch",
    "to_epoch",
]

NOTIFY_CHANNEL: Final = "permgate_changes"


class Connection(Protocol):
    """The two calls a backend's connection adapter provides."""

    async def fetch(self, sql: str, *args: object) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, *args: object) -> None: ...


def to_epoch(value: datetime | None) -> float | None:
    """A timestamp as stored: epoch seconds."""
    return None if value is None else value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    """A stored instant as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _dump(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def _load(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _json_or_none(text: str | None) -> object:
    return None if text is None else json.loads(text)


_TENANT_COLUMNS: Final = "id, account, type, enforcement"
_ROLE_COLUMNS: Final = "account, name, display_name, permissions, builtin"
_PRINCIPAL_COLUMNS: Final = "id, account, kind, tenants, disabled, sessions_valid_after"
_TOKEN_COLUMNS: Final = (
    "id, owner, account, name, permissions, tenants, created_at, expires_at, "
    "last_used_at, revoked_at, secret_hash, parent_token_id"
)


_SESSION_COLUMNS: Final = (
    "id_hash, principal_id, token_id, csrf, created_at, last_seen_at, idle_seconds, "
    "expires_at, ended_at"
)


@dataclass(frozen=True, slots=True)
class StoredPassword:
    """A principal's password as stored: its Argon2id PHC string, when it was set
    (epoch seconds) and the previous hashes kept for the history rule, newest first."""

    hash: str = field(repr=False)
    set_at: float
    previous: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A console session row; ``id_hash`` is the SHA-256 (hex) of its secret."""

    id_hash: str
    principal_id: str
    token_id: str | None
    csrf: str
    created_at: float
    last_seen_at: float
    idle_seconds: float
    expires_at: float
    ended_at: float | None = None


def _tenant(row: Sequence[Any]) -> Tenant:
    return Tenant(id=row[0], account=row[1], type=row[2], enforcement=row[3])


def _role(row: Sequence[Any]) -> Role:
    return Role(
        account=row[0],
        name=row[1],
        display_name=row[2],
        permissions=_load(row[3]),
        builtin=bool(row[4]),
    )


def _token(row: Sequence[Any]) -> AuthToken:
    return AuthToken(
        id=row[0],
        owner=row[1],
        account=row[2],
        name=row[3],
        permissions=_load(row[4]),
        tenants=_load(row[5]),
        created_at=from_epoch(row[6]),
        expires_at=from_epoch(row[7]),
        last_used_at=from_epoch(row[8]),
        revoked_at=from_epoch(row[9]),
        secret_hash=bytes(row[10]),
        parent_token_id=row[11],
    )


def _principal(row: Sequence[Any], assignments: tuple[RoleAssignment, ...]) -> Principal:
    return Principal(
        id=row[0],
        account=row[1],
        kind=row[2],
        roles=assignments,
        tenants=_load(row[3]),
        disabled=bool(row[4]),
        sessions_valid_after=from_epoch(row[5]),
    )


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Uses of one permission by one principal (through ``token_id``, or None: its
    own credentials) on one tenant (None: an endpoint without a tenant)."""

    principal: str
    token_id: str | None
    tenant: str | None
    permission: str
    account: str
    first_used: float
    last_used: float
    uses: int


class Transaction:
    """Reads and writes inside one backend transaction.

    ``changed()`` records what a write touched; the backend turns those records into
    change-log rows (one new version per transaction) just before it commits.
    """

    def __init__(self, conn: Connection, *, writable: bool) -> None:
        self._conn = conn
        self.writable = writable
        self._changes: list[tuple[ChangeKind, str | None, str | None]] = []

    # -- reads ---------------------------------------------------------------

    async def account_exists(self, account: str) -> bool:
        rows = await self._conn.fetch("SELECT 1 FROM accounts WHERE id = $1", account)
        return bool(rows)

    async def list_accounts(self) -> list[str]:
        rows = await self._conn.fetch("SELECT id FROM accounts ORDER BY id")
        return [row[0] for row in rows]

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._conn.fetch(
            f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant_id
        )
        return _tenant(rows[0]) if rows else None

    async def tenant_id_folding_to(self, tenant_id: str) -> str | None:
        """An existing tenant id equal to ``tenant_id`` ignoring case, in any account."""
        rows = await self._conn.fetch(
            "SELECT id FROM tenants WHERE lower(id) = $1 LIMIT 1", tenant_id.lower()
        )
        return str(rows[0][0]) if rows else None

    async def principal_id_folding_to(self, principal_id: str) -> str | None:
        """An existing principal id equal to ``principal_id`` ignoring case, in any
        account (the ``lower(id)`` index answers it)."""
        rows = await self._conn.fetch(
            "SELECT id FROM principals WHERE lower(id) = $1 LIMIT 1", principal_id.lower()
        )
        return str(rows[0][0]) if rows else None

    async def list_tenants(self, account: str) -> list[Tenant]:
        rows = await self._conn.fetch(
            f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE account = $1 ORDER BY id", account
        )
        return [_tenant(row) for row in rows]

    async def get_role(self, account: str, name: str) -> Role | None:
        rows = await self._conn.fetch(
            f"SELECT {_ROLE_COLUMNS} FROM roles WHERE account = $1 AND name = $2", account, name
        )
        return _role(rows[0]) if rows else None

    async def get_roles(self, account: str) -> dict[str, Role]:
        rows = await self._conn.fetch(
            f"SELECT {_ROLE_COLUMNS} FROM roles WHERE account = $1 ORDER BY name", account
        )
        return {row[1]: _role(row) for row in rows}

    async def role_holders(self, account: str, role: str) -> list[str]:
        rows = await self._conn.fetch(
            "SELECT DISTINCT principal FROM role_assignments "
            "WHERE account = $1 AND role = $2 ORDER BY principal",
            account,
            role,
        )
        return [row[0] for row in rows]

    async def get_principal(self, principal_id: str) -> Principal | None:
        rows = await self._conn.fetch(
            f"SELECT {_PRINCIPAL_COLUMNS} FROM principals WHERE id = $1", principal_id
        )
        if not rows:
            return None
        assigned = await self._conn.fetch(
            "SELECT role, tenant FROM role_assignments WHERE principal = $1 "
            "ORDER BY role, COALESCE(tenant, '')",
            principal_id,
        )
        return _principal(rows[0], tuple(RoleAssignment(r[0], r[1]) for r in assigned))

    async def list_principals(self, account: str) -> list[Principal]:
        rows = await self._conn.fetch(
            f"SELECT {_PRINCIPAL_COLUMNS} FROM principals WHERE account = $1 ORDER BY id",
            account,
        )
        assigned = await self._conn.fetch(
            "SELECT principal, role, tenant FROM role_assignments WHERE account = $1 "
            "ORDER BY principal, role, COALESCE(tenant, '')",
            account,
        )
        by_principal: dict[str, list[RoleAssignment]] = {}
        for principal, role, tenant in assigned:
            by_principal.setdefault(principal, []).append(RoleAssignment(role, tenant))
        return [_principal(row, tuple(by_principal.get(row[0], ()))) for row in rows]

    async def get_token(self, token_id: str) -> AuthToken | None:
        rows = await self._conn.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = $1", token_id
        )
        return _token(rows[0]) if rows else None

    async def child_tokens(self, parent_token_id: str) -> list[AuthToken]:
        """The tokens created by a caller authenticated with ``parent_token_id``."""
        rows = await self._conn.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE parent_token_id = $1 ORDER BY id",
            parent_token_id,
        )
        return [_token(row) for row in rows]

    async def list_tokens(
        self, *, owner: str | None = None, account: str | None = None
    ) -> list[AuthToken]:
        if owner is not None:
            where, arg = "owner = $1", owner
        elif account is not None:
            where, arg = "account = $1", account
        else:
            raise ValueError("list_tokens needs an owner or an account")
        rows = await self._conn.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE {where} ORDER BY created_at DESC, id",
            arg,
        )
        return [_token(row) for row in rows]

    async def version(self) -> int:
        rows = await self._conn.fetch("SELECT COALESCE(MAX(version), 0) FROM change_log")
        return int(rows[0][0])

    async def changes_since(self, version: int) -> list[Change]:
        rows = await self._conn.fetch(
            "SELECT version, kind, account, change_key FROM change_log "
            "WHERE version > $1 ORDER BY version, seq",
            version,
        )
        return [Change(int(r[0]), r[1], r[2], r[3]) for r in rows]

    async def list_audit(
        self, account: str | None, *, limit: int = 100, before: int | None = None
    ) -> list[AuditRecord]:
        clauses: list[str] = []
        args: list[object] = []
        if account is not None:
            args.append(account)
            clauses.append(f"account = ${len(args)}")
        if before is not None:
            args.append(before)
            clauses.append(f"id < ${len(args)}")
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        args.append(limit)
        rows = await self._conn.fetch(
            "SELECT id, ts, account, actor, action, target, before_json, after_json "
            f"FROM audit {where}ORDER BY id DESC LIMIT ${len(args)}",
            *args,
        )
        return [
            AuditRecord(
                int(r[0]), r[1], r[2], r[3], r[4], r[5], _json_or_none(r[6]), _json_or_none(r[7])
            )
            for r in rows
        ]

    # -- writes (service only) -----------------------------------------------

    def changed(self, kind: ChangeKind, account: str | None, key: str | None) -> None:
        """Note a change to announce when this transaction commits."""
        self._changes.append((kind, account, key))

    async def insert_account(self, account: str, now: float) -> None:
        await self._conn.execute(
            "INSERT INTO accounts (id, created_at) VALUES ($1, $2)", account, now
        )

    async def insert_tenant(self, tenant: Tenant, now: float) -> None:
        await self._conn.execute(
            "INSERT INTO tenants (id, account, type, enforcement, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            tenant.id,
            tenant.account,
            tenant.type,
            tenant.enforcement,
            now,
        )

    async def set_enforcement(self, tenant_id: str, enforcement: str) -> None:
        await self._conn.execute(
            "UPDATE tenants SET enforcement = $1 WHERE id = $2", enforcement, tenant_id
        )

    async def insert_role(self, role: Role) -> None:
        await self._conn.execute(
            "INSERT INTO roles (account, name, display_name, permissions, builtin) "
            "VALUES ($1, $2, $3, $4, $5)",
            role.account,
            role.name,
            role.display_name,
            _dump(role.permissions),
            role.builtin,
        )

    async def set_role_permissions(self, account: str, name: str, grants: Sequence[str]) -> None:
        await self._conn.execute(
            "UPDATE roles SET permissions = $1 WHERE account = $2 AND name = $3",
            _dump(grants),
            account,
            name,
        )

    async def delete_role(self, account: str, name: str) -> None:
        await self._conn.execute(
            "DELETE FROM roles WHERE account = $1 AND name = $2", account, name
        )

    async def insert_principal(self, principal: Principal) -> None:
        await self._conn.execute(
            "INSERT INTO principals (id, account, kind, tenants, disabled, sessions_valid_after) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            principal.id,
            principal.account,
            principal.kind,
            _dump(principal.tenants),
            principal.disabled,
            to_epoch(principal.sessions_valid_after),
        )
        await self.set_assignments(principal.id, principal.account, principal.roles)

    async def update_principal(self, principal: Principal) -> None:
        """Store every field but the id and account (and the role assignments)."""
        await self._conn.execute(
            "UPDATE principals SET kind = $1, tenants = $2, disabled = $3, "
            "sessions_valid_after = $4 WHERE id = $5",
            principal.kind,
            _dump(principal.tenants),
            principal.disabled,
            to_epoch(principal.sessions_valid_after),
            principal.id,
        )

    async def set_assignments(
        self, principal_id: str, account: str, assignments: Sequence[RoleAssignment]
    ) -> None:
        await self._conn.execute("DELETE FROM role_assignments WHERE principal = $1", principal_id)
        for assignment in assignments:
            await self._conn.execute(
                "INSERT INTO role_assignments (principal, account, role, tenant) "
                "VALUES ($1, $2, $3, $4)",
                principal_id,
                account,
                assignment.role,
                assignment.tenant,
            )

    async def delete_principal(self, principal_id: str) -> None:
        # Assignments and tokens go with it (ON DELETE CASCADE).
        await self._conn.execute("DELETE FROM principals WHERE id = $1", principal_id)

    async def insert_token(self, token: AuthToken) -> None:
        await self._conn.execute(
            f"INSERT INTO tokens ({_TOKEN_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            token.id,
            token.owner,
            token.account,
            token.name,
            _dump(token.permissions),
            _dump(token.tenants),
            to_epoch(token.created_at),
            to_epoch(token.expires_at),
            to_epoch(token.last_used_at),
            to_epoch(token.revoked_at),
            token.secret_hash,
            token.parent_token_id,
        )

    async def revoke_token(self, token_id: str, now: float) -> None:
        await self._conn.execute(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            token_id,
        )

    async def touch_tokens(self, last_used: dict[str, float]) -> None:
        for token_id, when in last_used.items():
            await self._conn.execute(
                "UPDATE tokens SET last_used_at = $1 WHERE id = $2 "
                "AND (last_used_at IS NULL OR last_used_at < $1)",
                when,
                token_id,
            )

    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        """Add aggregated uses: counts add up, the first use is the earliest and the
        last use the latest of what is stored and what is added."""
        for row in rows:
            await self._conn.execute(
                "INSERT INTO permission_usage (principal, token_id, tenant, permission, "
                "account, first_used, last_used, uses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (principal, token_id, tenant, permission) DO UPDATE SET "
                "uses = permission_usage.uses + excluded.uses, "
                "first_used = CASE WHEN excluded.first_used < permission_usage.first_used "
                "THEN excluded.first_used ELSE permission_usage.first_used END, "
                "last_used = CASE WHEN excluded.last_used > permission_usage.last_used "
                "THEN excluded.last_used ELSE permission_usage.last_used END",
                row.principal,
                row.token_id or "",
                row.tenant or "",
                row.permission,
                row.account,
                row.first_used,
                row.last_used,
                row.uses,
            )

    async def list_usage(
        self, *, principal: str | None = None, token_id: str | None = None, since: float
    ) -> list[UsageRow]:
        """Usage rows of one principal (its tokens' included) or of one token, last
        used at or after ``since``."""
        column, key = ("token_id", token_id) if token_id is not None else ("principal", principal)
        rows = await self._conn.fetch(
            "SELECT principal, token_id, tenant, permission, account, first_used, last_used, "
            f"uses FROM permission_usage WHERE {column} = $1 AND last_used >= $2 "
            "ORDER BY permission, tenant, token_id",
            key,
            since,
        )
        return [
            UsageRow(
                r[0], r[1] or None, r[2] or None, r[3], r[4], float(r[5]), float(r[6]), int(r[7])
            )
            for r in rows
        ]

    async def audit(
        self,
        *,
        ts: float,
        account: str | None,
        actor: str,
        action: str,
        target: str,
        before: object,
        after: object,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO audit (ts, account, actor, action, target, before_json, after_json) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            ts,
            account,
            actor,
            action,
            target,
            None if before is None else json.dumps(before, sort_keys=True),
            None if after is None else json.dumps(after, sort_keys=True),
        )

    # -- passwords, sign-in failures and console sessions (service only) ---------

    async def get_password(self, principal_id: str) -> StoredPassword | None:
        rows = await self._conn.fetch(
            "SELECT hash, set_at, previous FROM passwords WHERE principal = $1", principal_id
        )
        if not rows:
            return None
        row = rows[0]
        return StoredPassword(str(row[0]), float(row[1]), _load(row[2]))

    async def put_password(self, principal_id: str, stored: StoredPassword) -> None:
        await self._conn.execute("DELETE FROM passwords WHERE principal = $1", principal_id)
        await self._conn.execute(
            "INSERT INTO passwords (principal, hash, set_at, previous) VALUES ($1, $2, $3, $4)",
            principal_id,
            stored.hash,
            stored.set_at,
            _dump(stored.previous),
        )

    async def get_password_policy(self, account: str) -> str | None:
        """The account's configured policy as stored JSON; None when it has none."""
        rows = await self._conn.fetch(
            "SELECT policy FROM password_policies WHERE account = $1", account
        )
        return str(rows[0][0]) if rows else None

    async def put_password_policy(self, account: str, policy_json: str | None) -> None:
        await self._conn.execute("DELETE FROM password_policies WHERE account = $1", account)
        if policy_json is not None:
            await self._conn.execute(
                "INSERT INTO password_policies (account, policy) VALUES ($1, $2)",
                account,
                policy_json,
            )

    async def get_login_failures(self, login: str) -> tuple[list[float], float | None]:
        """The failure instants recorded for ``login`` and the end of its lock."""
        rows = await self._conn.fetch(
            "SELECT failures, locked_until FROM login_failures WHERE login = $1", login
        )
        if not rows:
            return [], None
        return [float(x) for x in json.loads(rows[0][0])], rows[0][1]

    async def put_login_failures(
        self, login: str, failures: Sequence[float], locked_until: float | None, now: float
    ) -> None:
        await self._conn.execute("DELETE FROM login_failures WHERE login = $1", login)
        if failures or locked_until is not None:
            await self._conn.execute(
                "INSERT INTO login_failures (login, failures, locked_until, updated_at) "
                "VALUES ($1, $2, $3, $4)",
                login,
                json.dumps(list(failures)),
                locked_until,
                now,
            )

    async def prune_login_failures(self, older_than: float) -> None:
        """Forget failures of logins untouched since ``older_than`` whose lock is over."""
        await self._conn.execute(
            "DELETE FROM login_failures WHERE updated_at < $1 "
            "AND (locked_until IS NULL OR locked_until < $1)",
            older_than,
        )

    async def insert_console_session(self, session: StoredSession) -> None:
        await self._conn.execute(
            f"INSERT INTO console_sessions ({_SESSION_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            session.id_hash,
            session.principal_id,
            session.token_id,
            session.csrf,
            session.created_at,
            session.last_seen_at,
            session.idle_seconds,
            session.expires_at,
            session.ended_at,
        )

    async def get_console_session(self, id_hash: str) -> StoredSession | None:
        rows = await self._conn.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM console_sessions WHERE id_hash = $1", id_hash
        )
        if not rows:
            return None
        r = rows[0]
        return StoredSession(
            r[0], r[1], r[2], r[3], float(r[4]), float(r[5]), float(r[6]), float(r[7]), r[8]
        )

    async def touch_console_session(self, id_hash: str, now: float) -> None:
        await self._conn.execute(
            "UPDATE console_sessions SET last_seen_at = $1 WHERE id_hash = $2", now, id_hash
        )

    async def end_console_session(self, id_hash: str, now: float) -> None:
        await self._conn.execute(
            "UPDATE console_sessions SET ended_at = $1 WHERE id_hash = $2 AND ended_at IS NULL",
            now,
            id_hash,
        )

    async def prune_console_sessions(self, older_than: float) -> None:
        """Delete sessions past their lifetime, or ended, before ``older_than``."""
        await self._conn.execute(
            "DELETE FROM console_sessions WHERE expires_at < $1 OR ended_at < $1", older_than
        )

    async def flush_changes(self, now: float) -> int | None:
        """Write the noted changes under one new version; None when nothing changed.

        Called by the backend right before commit, while the store-wide write lock is
        held, so ``MAX(version) + 1`` is both gap-free and in commit order.
        """
        if not self._changes:
            return None
        version = await self.version() + 1
        seen: set[tuple[ChangeKind, str | None, str | None]] = set()
        for change in self._changes:
            if change in seen:
                continue
            seen.add(change)
            kind, account, key = change
            await self._conn.execute(
                "INSERT INTO change_log (version, kind, account, change_key, at) "
                "VALUES ($1, $2, $3, $4, $5)",
                version,
                kind,
                account,
                key,
                now,
            )
        self._changes.clear()
        return version
