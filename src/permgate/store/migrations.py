"""Numbered schema migrations, shared by both backends.

A store remembers the last step it ran in ``schema_version``; opening a store runs
the steps after it, in order, in one transaction (and, on PostgreSQL, under an
advisory lock so that sidecars starting together migrate once). Steps are never
edited once released: a store made by an older permgate is migrated, not recreated.
Each step is written once with placeholders for the few types the dialects spell
differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from permgate.core.errors import StoreUnavailable

if TYPE_CHECKING:
    from permgate.store.sql import Connection

Dialect = Literal["sqlite", "postgres"]

_TYPES: Final[dict[Dialect, dict[str, str]]] = {
    "sqlite": {
        "float": "REAL",
        "blob": "BLOB",
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    "postgres": {
        "float": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "serial_pk": "BIGSERIAL PRIMARY KEY",
    },
}


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``number`` is what ``schema_version`` holds after it."""

    number: int
    description: str
    statements: tuple[str, ...]
    # Checks run before the statements: (query, what its rows mean). A query that
    # returns rows stops the migration with a message naming them, so a step that
    # adds a constraint never half-applies to data that breaks it.
    preconditions: tuple[tuple[str, str], ...] = ()

    def sql(self, dialect: Dialect) -> list[str]:
        """The step's statements spelled for ``dialect``."""
        return [statement.format(**_TYPES[dialect]) for statement in self.statements]


MIGRATIONS: Final = (
    Migration(
        1,
        "the access model, the change log and the audit table",
        (
            """CREATE TABLE accounts (
                id TEXT PRIMARY KEY,
                created_at {float} NOT NULL)""",
            """CREATE TABLE tenants (
                id TEXT PRIMARY KEY,
                account TEXT NOT NULL REFERENCES accounts(id),
                type TEXT NOT NULL,
                enforcement TEXT NOT NULL,
                created_at {float} NOT NULL)""",
            "CREATE INDEX tenants_account ON tenants(account)",
            """CREATE TABLE roles (
                account TEXT NOT NULL REFERENCES accounts(id),
                name TEXT NOT NULL,
                display_name TEXT NOT NULL,
                permissions TEXT NOT NULL,
                builtin BOOLEAN NOT NULL,
                PRIMARY KEY (account, name))""",
            """CREATE TABLE principals (
                id TEXT PRIMARY KEY,
                account TEXT NOT NULL REFERENCES accounts(id),
                kind TEXT NOT NULL,
                tenants TEXT NOT NULL,
                disabled BOOLEAN NOT NULL,
                sessions_valid_after {float})""",
            "CREATE INDEX principals_account ON principals(account)",
            # The foreign key to roles is what makes "deleted but still assigned"
            # impossible even if two writers race.
            """CREATE TABLE role_assignments (
                principal TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
                account TEXT NOT NULL,
                role TEXT NOT NULL,
                tenant TEXT REFERENCES tenants(id),
                FOREIGN KEY (account, role) REFERENCES roles(account, name))""",
            "CREATE INDEX role_assignments_principal ON role_assignments(principal)",
            "CREATE INDEX role_assignments_role ON role_assignments(account, role)",
            """CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
                account TEXT NOT NULL REFERENCES accounts(id),
                name TEXT NOT NULL,
                permissions TEXT NOT NULL,
                tenants TEXT NOT NULL,
                secret_hash {blob} NOT NULL,
                created_at {float} NOT NULL,
                expires_at {float},
                last_used_at {float},
                revoked_at {float})""",
            """CREATE TABLE change_log (
                seq {serial_pk},
                version BIGINT NOT NULL,
                kind TEXT NOT NULL,
                account TEXT,
                change_key TEXT,
                at {float} NOT NULL)""",
            "CREATE INDEX change_log_version ON change_log(version)",
            """CREATE TABLE audit (
                id {serial_pk},
                ts {float} NOT NULL,
                account TEXT,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                before_json TEXT,
                after_json TEXT)""",
        ),
    ),
    Migration(
        2,
        "indexes for the admin API's listings: tokens by owner, audit by account",
        (
            "CREATE INDEX tokens_owner ON tokens(owner)",
            "CREATE INDEX tokens_account ON tokens(account)",
            "CREATE INDEX audit_account ON audit(account, id)",
        ),
    ),
    Migration(
        3,
        "principal and tenant ids unique regardless of case; tokens remember their parent",
        (
            # An upstream that compares ids case-insensitively must never see two
            # principals (or tenants) as one; the service refuses such ids with a clear
            # message, and these indexes hold the line against any other writer.
            "CREATE UNIQUE INDEX principals_id_folded ON principals(lower(id))",
            "CREATE UNIQUE INDEX tenants_id_folded ON tenants(lower(id))",
            # The auth token whose caller created this one: revoking a token revokes
            # its descendants. Not a foreign key: a parent deleted with its owner
            # leaves the lineage readable.
            "ALTER TABLE tokens ADD COLUMN parent_token_id TEXT",
            "CREATE INDEX tokens_parent ON tokens(parent_token_id)",
        ),
        preconditions=(
            (
                "SELECT a.id, a.account, b.id, b.account FROM principals a "
                "JOIN principals b ON lower(a.id) = lower(b.id) AND a.id < b.id "
                "ORDER BY a.id, b.id",
                "principal ids that differ only in case",
            ),
            (
                "SELECT a.id, a.account, b.id, b.account FROM tenants a "
                "JOIN tenants b ON lower(a.id) = lower(b.id) AND a.id < b.id "
                "ORDER BY a.id, b.id",
                "tenant ids that differ only in case",
            ),
        ),
    ),
    Migration(
        4,
        "native login: password hashes, per-account password policies, sign-in "
        "failures and console sessions",
        (
            # One row per principal that has a password: its Argon2id PHC string, when
            # it was set, and the previous hashes the policy's history keeps (JSON list,
            # newest first). Never the password itself.
            """CREATE TABLE passwords (
                principal TEXT PRIMARY KEY REFERENCES principals(id) ON DELETE CASCADE,
                hash TEXT NOT NULL,
                set_at {float} NOT NULL,
                previous TEXT NOT NULL)""",
            # An account's configured password policy as JSON (no row: the floor only).
            """CREATE TABLE password_policies (
                account TEXT PRIMARY KEY REFERENCES accounts(id),
                policy TEXT NOT NULL)""",
            # Failed sign-ins per principal id as given, folded to lower case (unknown
            # ids included, so that the lockout answer tells nothing about which ids
            # exist): the failure instants within the window, and the lock's end.
            """CREATE TABLE login_failures (
                login TEXT PRIMARY KEY,
                failures TEXT NOT NULL,
                locked_until {float},
                updated_at {float} NOT NULL)""",
            "CREATE INDEX login_failures_updated ON login_failures(updated_at)",
            # Console sessions: only the SHA-256 of the session secret is stored.
            """CREATE TABLE console_sessions (
                id_hash TEXT PRIMARY KEY,
                principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
                token_id TEXT,
                csrf TEXT NOT NULL,
                created_at {float} NOT NULL,
                last_seen_at {float} NOT NULL,
                idle_seconds {float} NOT NULL,
                expires_at {float} NOT NULL,
                ended_at {float})""",
            "CREATE INDEX console_sessions_principal ON console_sessions(principal_id)",
            "CREATE INDEX console_sessions_expires ON console_sessions(expires_at)",
        ),
    ),
    Migration(
        5,
        "permission usage: which permissions each principal and token exercised, per tenant",
        (
            # One row per (principal, token, tenant, permission) a gateway saw allowed:
            # first and last use (epoch seconds) and how many uses. '' stands for "no
            # token" and "no tenant" (a key column cannot be NULL). No foreign keys:
            # usage outlives a deleted token or principal, and is written without the
            # model's write lock.
            """CREATE TABLE permission_usage (
                principal TEXT NOT NULL,
                token_id TEXT NOT NULL,
                tenant TEXT NOT NULL,
                permission TEXT NOT NULL,
                account TEXT NOT NULL,
                first_used {float} NOT NULL,
                last_used {float} NOT NULL,
                uses BIGINT NOT NULL,
                PRIMARY KEY (principal, token_id, tenant, permission))""",
            "CREATE INDEX permission_usage_token ON permission_usage(token_id)",
        ),
    ),
)

LATEST: Final = MIGRATIONS[-1].number

SCHEMA_VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def pending(current: int, target: int = LATEST) -> list[Migration]:
    """The steps to run to go from ``current`` to ``target``."""
    return [m for m in MIGRATIONS if current < m.number <= target]


async def migrate(conn: Connection, dialect: Dialect, target: int = LATEST) -> int:
    """Bring the schema on ``conn`` up to ``target``; the caller holds a transaction.

    Returns the schema version the store had before. A store newer than this code is
    refused rather than touched.
    """
    await conn.execute(SCHEMA_VERSION_TABLE)
    rows = await conn.fetch("SELECT version FROM schema_version")
    current = int(rows[0][0]) if rows else 0
    if current > LATEST:
        raise StoreUnavailable(
            f"the store's schema is version {current}, newer than this permgate "
            f"understands (up to {LATEST}); upgrade permgate"
        )
    for migration in pending(current, target):
        await _check_preconditions(conn, migration)
        for statement in migration.sql(dialect):
            await conn.execute(statement)
    new = max(current, min(target, LATEST))
    if not rows:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", new)
    elif new != current:
        await conn.execute("UPDATE schema_version SET version = $1", new)
    return current


async def _check_preconditions(conn: Connection, migration: Migration) -> None:
    """Refuse a step whose constraint the stored data already breaks, naming the rows
    and what to do (the store stays at its current version, untouched)."""
    for query, what in migration.preconditions:
        rows = await conn.fetch(query)
        if not rows:
            continue
        pairs = "; ".join(
            f"{r[0]!r} (account {r[1]!r}) and {r[2]!r} (account {r[3]!r})" for r in rows
        )
        raise StoreUnavailable(
            f"cannot upgrade the store's schema to version {migration.number}: it holds "
            f"{what}: {pairs}. Ids must be unique regardless of case: with the permgate "
            "version that wrote them (or SQL), delete or rename all but one of each pair, "
            "then start this version again; the store was left unchanged"
        )
