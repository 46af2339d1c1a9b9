"""The store contract shared by the SQLite and PostgreSQL backends.

The gateway reads through :class:`StoreReader` (a handful of point lookups whose
results it caches) and learns about changes through :meth:`Store.watch`. Every
write goes through :mod:`permgate.manage.service`, never straight to a backend, so the
rules for changing the model live in one place.

Change notification contract:
  * every committed write transaction appends one or more rows to a change log and
    advances the store's ``version`` (a monotonically increasing integer);
  * ``watch(on_changes, on_reset)`` calls ``on_changes(changes)`` with what changed,
    in commit order, within one second of the commit (PostgreSQL: LISTEN/NOTIFY then
    read the log since the last seen version; SQLite: a cheap poll of the version);
  * ``on_reset()`` is called whenever the watcher may have missed something (a lost
    connection re-established, a log gap): the listener must then drop every cache
    derived from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from permgate.core.model import AuthToken, Principal, Role, Tenant

if TYPE_CHECKING:
    from permgate.store.sql import Transaction, UsageRow

ChangeKind = Literal["account", "tenant", "role", "principal", "token", "all"]


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change: ``kind`` of object, its ``account`` and ``key`` (its id or
    name; None with kind ``all`` or ``account``). ``version`` is the store version
    that the change's transaction produced."""

    version: int
    kind: ChangeKind
    account: str | None
    key: str | None


OnChanges = Callable[[Sequence[Change]], None]
OnReset = Callable[[], None]


class StoreReader(Protocol):
    """The lookups the request path needs; each is one indexed read."""

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def get_principal(self, principal_id: str) -> Principal | None: ...

    async def get_roles(self, account: str) -> dict[str, Role]: ...

    async def get_token(self, token_id: str) -> AuthToken | None:
        """The token with its ``secret_hash`` filled in, revoked or not."""
        ...

    async def touch_tokens(self, last_used: dict[str, float]) -> None:
        """Record ``last_used_at`` (epoch seconds) for many tokens in one write."""
        ...

    async def version(self) -> int: ...

    async def ping(self) -> None:
        """Raise :class:`permgate.core.errors.StoreUnavailable` when the store is unreachable."""
        ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One durable audit row: who (``actor``) did what (``action``) to which ``target``,
    with the object's JSON-able state ``before`` and ``after`` (None when absent)."""

    id: int
    ts: float
    account: str | None
    actor: str
    action: str
    target: str
    before: object
    after: object


class Store(StoreReader, Protocol):
    """A whole backend: the reads above, listings for the admin API, the one write
    path (:meth:`write`, used only by :mod:`permgate.manage.service`) and change watching."""

    dsn: str
    last_version: int
    """The newest store version a running :meth:`watch` has delivered (0 before)."""

    async def account_exists(self, account: str) -> bool: ...

    async def list_accounts(self) -> list[str]: ...

    async def list_tenants(self, account: str) -> list[Tenant]: ...

    async def list_roles(self, account: str) -> list[Role]: ...

    async def list_principals(self, account: str) -> list[Principal]: ...

    async def list_tokens(
        self, *, owner: str | None = None, account: str | None = None
    ) -> list[AuthToken]:
        """Tokens of one owner or of a whole account, newest first, revoked included."""
        ...

    async def role_holders(self, account: str, role: str) -> list[str]: ...

    async def list_audit(
        self, account: str | None, *, limit: int = 100, before: int | None = None
    ) -> list[AuditRecord]:
        """Audit rows newest first; ``before`` is an audit id for paging back."""
        ...

    async def changes_since(self, version: int) -> list[Change]: ...

    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        """Add aggregated permission uses in one write (counts add up; earliest first
        use, latest last use); bookkeeping, not a model change."""
        ...

    async def list_usage(
        self, *, principal: str | None = None, token_id: str | None = None, since: float
    ) -> list[UsageRow]:
        """Permission uses of one principal (its tokens' too) or one token, last used
        at or after ``since`` (epoch seconds)."""
        ...

    def write(self) -> AbstractAsyncContextManager[Transaction]:
        """One serialised write transaction; its change-log rows and notification are
        committed with it. Only :mod:`permgate.manage.service` calls this."""
        ...

    async def watch(self, on_changes: OnChanges, on_reset: OnReset) -> None:
        """Start delivering changes committed from now on (see the module docstring)."""
        ...

    async def deliver_now(self) -> None:
        """Deliver changes committed so far right away (a no-op when not watching)."""
        ...

    async def close(self) -> None: ...
