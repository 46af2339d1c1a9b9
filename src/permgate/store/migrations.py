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

from permgate.errors import StoreUnavailable

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
        for statement in migration.sql(dialect):
            await conn.execute(statement)
    new = max(current, min(target, LATEST))
    if not rows:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", new)
    elif new != current:
        await conn.execute("UPDATE schema_version SET version = $1", new)
    return current
