"""The store contract shared by the SQLite and PostgreSQL backends.

The gateway reads through :class:`StoreReader` (a handful of point lookups whose
results it caches) and learns about changes through :meth:`Store.watch`. Every
write goes through :mod:`permgate.service`, never straight to a backend, so the
rules of DESIGN §1.4 live in one place.

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
from dataclasses import dataclass
from typing import Literal, Protocol

from permgate.model import AuthToken, Principal, Role, Tenant

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
        """Raise :class:`permgate.errors.StoreUnavailable` when the store is unreachable."""
        ...
