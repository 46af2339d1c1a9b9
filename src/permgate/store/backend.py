"""What the two backends have in common above the SQL: read delegation and the
delivery half of change watching (reading the log since the last seen version).

A backend supplies :meth:`SqlStore._read` and :meth:`SqlStore.write` (transactions
on its own connections), :meth:`SqlStore._side_read` (a read on a connection of its
own that request-path lookups never use), the *trigger* of delivery: a poll
(SQLite) or a notification (PostgreSQL), and its driver's errors: the one rule for
what they mean (a violated key is a Conflict, anything else StoreUnavailable, a failed
open leaves nothing open) is here.

Change delivery and pings go through the side connection, so a flood of lookups
queued on the request-path connections can delay neither a revocation nor /readyz.
The watcher is supervised: whatever goes wrong in it is logged and it starts again;
it never stops silently while the store is open.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import ClassVar, Final

from permgate.core.errors import Conflict, PermgateError, StoreUnavailable
from permgate.core.model import AuthToken, Principal, Role, Tenant
from permgate.store.base import AuditRecord, Change, OnChanges, OnReset
from permgate.store.sql import Transaction, UsageRow

log: Final = logging.getLogger("permgate.store")
# After an unexpected error in the watcher: how long before it starts again.
RESTART_SECONDS: Final = 0.5


class SqlStore(ABC):
    """A store over a SQL backend; see :class:`permgate.store.base.Store`."""

    dsn: str
    dialect: str
    # The backend driver's own errors (any of them: the store cannot be used), and among
    # them the one a violated key or constraint raises.
    _BACKEND_ERRORS: ClassVar[tuple[type[BaseException], ...]]
    _CONFLICT_ERROR: ClassVar[type[BaseException]]

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.last_version = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._on_changes: OnChanges | None = None
        self._on_reset: OnReset | None = None
        self._closed = False
        self._deliver_lock = asyncio.Lock()

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-only transaction (one consistent snapshot)."""

    @abstractmethod
    def write(self) -> AbstractAsyncContextManager[Transaction]:
        """A serialised write transaction; see :meth:`Store.write`."""

    def _point_read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read of ONE statement (consistent by itself): backends may skip the
        explicit transaction, saving round trips on the request path's misses."""
        return self._read()

    def _side_read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read of ONE statement on the connection kept for change delivery and pings
        (by default the ordinary read path)."""
        return self._read()

    @abstractmethod
    async def _watch_loop(self) -> None:
        """Run until closed, calling :meth:`_deliver` when something may have changed."""

    @abstractmethod
    async def _close_connections(self) -> None: ...

    @abstractmethod
    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """A backend error as "the store cannot be used", naming where it is."""

    def _translate(self, exc: BaseException) -> PermgateError:
        """A backend error as permgate's: a violated key means the schema caught what
        the service's checks did not (a race), a Conflict; anything else, unavailable."""
        if isinstance(exc, self._CONFLICT_ERROR):
            return Conflict(f"the change conflicts with the store's current state: {exc}")
        return self._unavailable(exc)

    @asynccontextmanager
    async def _opening(self) -> AsyncIterator[None]:
        """Around ``open``'s connecting and migrating: if it fails, or is cancelled,
        nothing is left open, and a backend error leaves as StoreUnavailable."""
        try:
            yield
        except self._BACKEND_ERRORS as exc:
            await self._close_connections()
            raise self._unavailable(exc) from exc
        except BaseException:
            await self._close_connections()
            raise

    # -- reads ---------------------------------------------------------------

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._point_read() as tx:
            return await tx.get_tenant(tenant_id)

    async def get_principal(self, principal_id: str) -> Principal | None:
        async with self._read() as tx:
            return await tx.get_principal(principal_id)

    async def get_roles(self, account: str) -> dict[str, Role]:
        async with self._point_read() as tx:
            return await tx.get_roles(account)

    async def get_token(self, token_id: str) -> AuthToken | None:
        async with self._point_read() as tx:
            return await tx.get_token(token_id)

    async def version(self) -> int:
        async with self._read() as tx:
            return await tx.version()

    async def ping(self) -> None:
        async with self._side_read() as tx:
            await tx.version()

    async def account_exists(self, account: str) -> bool:
        async with self._read() as tx:
            return await tx.account_exists(account)

    async def list_accounts(self) -> list[str]:
        async with self._read() as tx:
            return await tx.list_accounts()

    async def list_tenants(self, account: str) -> list[Tenant]:
        async with self._read() as tx:
            return await tx.list_tenants(account)

    async def list_roles(self, account: str) -> list[Role]:
        async with self._read() as tx:
            return list((await tx.get_roles(account)).values())

    async def list_principals(self, account: str) -> list[Principal]:
        async with self._read() as tx:
            return await tx.list_principals(account)

    async def list_tokens(
        self, *, owner: str | None = None, account: str | None = None
    ) -> list[AuthToken]:
        async with self._read() as tx:
            return await tx.list_tokens(owner=owner, account=account)

    async def role_holders(self, account: str, role: str) -> list[str]:
        async with self._read() as tx:
            return await tx.role_holders(account, role)

    async def list_audit(
        self, account: str | None, *, limit: int = 100, before: int | None = None
    ) -> list[AuditRecord]:
        async with self._read() as tx:
            return await tx.list_audit(account, limit=limit, before=before)

    async def changes_since(self, version: int) -> list[Change]:
        async with self._read() as tx:
            return await tx.changes_since(version)

    async def touch_tokens(self, last_used: dict[str, float]) -> None:
        # Not a model change: no change-log row, so caches are not churned by use.
        if not last_used:
            return
        async with self._touch() as tx:
            await tx.touch_tokens(last_used)

    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        # Bookkeeping like last_used_at: no change-log row, not behind the model's lock.
        if not rows:
            return
        async with self._touch() as tx:
            await tx.add_usage(rows)

    async def list_usage(
        self, *, principal: str | None = None, token_id: str | None = None, since: float
    ) -> list[UsageRow]:
        async with self._read() as tx:
            return await tx.list_usage(principal=principal, token_id=token_id, since=since)

    def _touch(self) -> AbstractAsyncContextManager[Transaction]:
        return self.write()

    # -- watching ------------------------------------------------------------

    async def watch(self, on_changes: OnChanges, on_reset: OnReset) -> None:
        """Start the background watcher; changes committed after this call are delivered."""
        if self._watch_task is not None:
            raise RuntimeError("this store is already being watched")
        self._on_changes = on_changes
        self._on_reset = on_reset
        self.last_version = await self.version()
        self._watch_task = asyncio.create_task(self._supervise(), name="permgate-store-watch")

    async def _supervise(self) -> None:
        """Run the watch loop for as long as the store is open: an unexpected error is
        logged, every cache is reset (changes may have been missed) and it restarts."""
        while not self._closed:
            try:
                await self._watch_loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store watch failed; restarting it and resetting every cache")
                self._reset()
                await asyncio.sleep(RESTART_SECONDS)

    async def deliver_now(self) -> None:
        """Deliver whatever has been committed, now: after a write through its own admin
        API a gateway calls this so the change is enforced from its next request
        without waiting for the notification or the poll. A no-op when
        not watching."""
        if self._watch_task is not None:
            await self._deliver()

    async def _deliver(self) -> None:
        """Read the log since :attr:`last_version` and hand new changes over in order."""
        async with self._deliver_lock:
            await self._deliver_locked()

    async def _deliver_locked(self) -> None:
        async with self._side_read() as tx:
            changes = await tx.changes_since(self.last_version)
        if not changes:
            return
        if changes[0].version != self.last_version + 1:
            # A gap means rows we never saw: everything derived may be stale.
            self.last_version = changes[-1].version
            self._reset()
            return
        self.last_version = changes[-1].version
        if self._on_changes is not None:
            try:
                self._on_changes(changes)
            except Exception:
                log.exception("store change listener failed; resetting it")
                self._reset()

    async def _recover(self) -> tuple[int, int]:
        """After a possible loss of notifications: read the log from where delivery
        stopped, hand the changes over, then reset every cache anyway (anything not
        in the log may have changed too). Returns the version delivery resumed from
        and how many changes it caught up on."""
        async with self._deliver_lock:
            since = self.last_version
            async with self._side_read() as tx:
                changes = await tx.changes_since(since)
            if changes:
                self.last_version = changes[-1].version
                if self._on_changes is not None and changes[0].version == since + 1:
                    try:
                        self._on_changes(changes)
                    except Exception:
                        log.exception("store change listener failed")
            self._reset()
        return since, len(changes)

    def _reset(self) -> None:
        if self._on_reset is None:
            return
        try:
            self._on_reset()
        except Exception:
            log.exception("store reset listener failed")

    async def _deliver_quietly(self) -> bool:
        """:meth:`_deliver`, reporting (not raising) an unreachable store; any other
        error is logged with its traceback, never swallowed silently."""
        try:
            await self._deliver()
        except StoreUnavailable as exc:
            log.warning("store watch: %s", exc)
            return False
        except Exception:
            log.exception("store watch: reading the change log failed")
            return False
        return True

    async def close(self) -> None:
        """Stop the watcher and release every connection."""
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._close_connections()
