"""The gateway's in-memory view of the store for the request path.

A hit costs a dict lookup or two and no I/O; a miss reads the store once, however
many requests ask for the same key at the same time (single flight), and fills the
cache. Change notifications drop exactly what changed and bump :attr:`ModelCache.epoch`,
which the decision cache keys on, so no cached decision outlives any change.

Unknown keys: "no such id" is remembered in a bounded map of its own (so a flood of
random ids cannot evict known entries), briefly, and only within the epoch it was
read in (a token created a moment later works at once). Misses for keys the caller
picks (token ids, tenant ids) go through a :class:`~permgate.gateway.lookuplimit.FairLimiter`:
a few store reads at once, shared fairly between clients; the excess is refused
with 503 at once rather than queued on the store.

With ``--workers N``, :meth:`ModelCache.follow` binds the cache to a change counter
shared by the workers: when it moved, the next lookup first catches up from the
store's change log, so a change committed through any worker's admin API binds this
worker before that API answered.

Outages fail closed: a miss while the store is unreachable raises
:class:`~permgate.core.errors.StoreUnavailable` (503). Entries already in memory keep
serving for at most ``outage_grace_seconds`` after the store was last known reachable;
past that bound a hit first probes the store (one ping at a time, at most one a
second while it is down) and raises if it does not answer. Run :meth:`ModelCache.keepalive`
so a quiet store is proven reachable without ever probing from the request path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Protocol

from permgate.core.errors import StoreUnavailable
from permgate.core.model import AuthToken, Principal, Role, Tenant
from permgate.gateway.generations import Generations
from permgate.gateway.lookuplimit import LOOKUP_CLIENT, FairLimiter
from permgate.store.base import Change, OnChanges, OnReset, StoreReader

__all__ = ["ModelCache", "SharedCounter", "Watchable"]

log = logging.getLogger(__name__)

_EMPTY_ROLES: Final[Mapping[str, Role]] = MappingProxyType({})
# While the store is down, misses and hits past the grace bound try it at most this often.
_PROBE_INTERVAL: Final = 1.0
_KEYED_KINDS: Final = frozenset({"principal", "token", "tenant"})
# Distinct shared values (accounts, owners, grant and tenant tuples) kept for sharing
# before the table starts again: a bound, whatever the store holds.
_COMMON_MAX: Final = 4096

_Key = tuple[str, str]


class Watchable(Protocol):
    """What :meth:`ModelCache.attach` needs from a store: its change watcher."""

    async def watch(self, on_changes: OnChanges, on_reset: OnReset) -> None: ...


class SharedCounter(Protocol):
    """What :meth:`ModelCache.follow` reads: a count other processes bump."""

    @property
    def value(self) -> int: ...


class _Entry:
    """A cached answer (``None`` for "does not exist"), when it stops being trusted,
    and (for "does not exist") the epoch it holds in."""

    __slots__ = ("epoch", "expires", "value")

    def __init__(self, value: object, expires: float, epoch: int = -1) -> None:
        self.value = value
        self.expires = expires
        self.epoch = epoch


class ModelCache:
    """Tenants, principals, tokens and per-account roles, kept in memory.

    Args:
        store: where misses are read from.
        max_entries: bound over every kind of entry together (:class:`Generations`:
            an entry in use survives a stream of new ones).
        ttl_seconds: safety net: an entry is re-read after this long even if no change
            was notified (changes, not this TTL, are what keep the cache correct).
        negative_ttl_seconds: how long "no such id" is remembered (within one epoch).
        negative_max_entries: bound on remembered "no such id" answers.
        outage_grace_seconds: how long known entries keep serving after the store was
            last known reachable.
        limiter: bounds and shares out store reads for keys the caller picks.
        clock: monotonic seconds; injectable for tests.

    Every method runs on the event loop's thread, change callbacks included.
    """

    def __init__(
        self,
        store: StoreReader,
        *,
        max_entries: int = 50_000,
        ttl_seconds: float = 300.0,
        negative_ttl_seconds: float = 5.0,
        negative_max_entries: int = 10_000,
        outage_grace_seconds: float = 5.0,
        limiter: FairLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._grace = outage_grace_seconds
        self._clock = clock
        self._entries: Generations[_Key, _Entry] = Generations(max_entries)
        self._negative: Generations[_Key, _Entry] = Generations(negative_max_entries)
        # value -> the one shared copy of it (see _compact)
        self._strings: dict[str, str] = {}
        self._tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._limiter = limiter if limiter is not None else FairLimiter()
        self._shared: SharedCounter | None = None
        self._shared_applied = 0
        self._catch_up_from_log: Callable[[], Awaitable[None]] | None = None
        self._catching_up: asyncio.Future[None] | None = None
        # key -> (epoch when the read started, the read); joined only within one epoch.
        self._inflight: dict[_Key, tuple[int, asyncio.Future[Any]]] = {}
        self._probing: asyncio.Future[None] | None = None
        self._last_reachable = clock()
        self._last_failure = float("-inf")
        self._reachable = True
        self.epoch = 0
        """Bumped by every change and reset: part of every decision-cache key."""

    # -- reads -------------------------------------------------------------------

    async def tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant, or None when it does not exist."""
        result: Tenant | None = await self._get(
            ("tenant", tenant_id), lambda: self._store.get_tenant(tenant_id), limited=True
        )
        return result

    async def principal(self, principal_id: str) -> Principal | None:
        """The principal, or None when it does not exist."""
        result: Principal | None = await self._get(
            ("principal", principal_id), lambda: self._store.get_principal(principal_id)
        )
        return result

    async def token(self, token_id: str) -> AuthToken | None:
        """The token with its secret hash, revoked or not, or None when unknown."""
        result: AuthToken | None = await self._get(
            ("token", token_id), lambda: self._store.get_token(token_id), limited=True
        )
        return result

    async def roles(self, account: str) -> Mapping[str, Role]:
        """Every role of ``account`` by name (read-only; empty for an unknown account)."""
        result: Mapping[str, Role] = await self._get(("roles", account), self._read_roles(account))
        return result

    def _read_roles(self, account: str) -> Callable[[], Awaitable[Mapping[str, Role]]]:
        async def read() -> Mapping[str, Role]:
            found = await self._store.get_roles(account)
            return MappingProxyType(dict(found)) if found else _EMPTY_ROLES

        return read

    async def _get(
        self, key: _Key, read: Callable[[], Awaitable[Any]], *, limited: bool = False
    ) -> Any:
        shared = self._shared
        if shared is not None and shared.value != self._shared_applied:
            await self._catch_up()
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._negative.get(key)
            if entry is not None and entry.epoch != self.epoch:
                entry = None  # "no such id" holds only until the next change
        if entry is not None and entry.expires > now:
            if now - self._last_reachable > self._grace:
                await self._probe()
            return entry.value
        flight = self._inflight.get(key)
        if flight is None or flight[0] != self.epoch:
            if not self._reachable and now - self._last_failure < _PROBE_INTERVAL:
                # Down a moment ago: answer 503 now rather than queue reads on a dead store.
                raise StoreUnavailable("store unreachable")
            epoch = self.epoch
            if limited:
                fill = self._limiter.run(LOOKUP_CLIENT.get(), lambda: self._fill(key, read, epoch))
            else:
                fill = self._fill(key, read, epoch)
            task = asyncio.ensure_future(fill)
            flight = (epoch, task)
            self._inflight[key] = flight
            task.add_done_callback(lambda done: self._landed(key, done))
        # shield: one cancelled request must not cancel the read the others wait on.
        return await asyncio.shield(flight[1])

    async def _fill(self, key: _Key, read: Callable[[], Awaitable[Any]], epoch: int) -> Any:
        try:
            value = await read()
        except StoreUnavailable:
            self._mark_unreachable()
            raise
        self._mark_reachable()
        # A change that arrived during the read may postdate what we read: don't keep it.
        if epoch == self.epoch:
            if value is None or value is _EMPTY_ROLES:
                self._negative.put(key, _Entry(value, self._clock() + self._negative_ttl, epoch))
            else:
                value = self._compact(value)
                if getattr(value, "id", None) == key[1]:
                    key = (key[0], value.id)  # the record's id string, not a second copy
                self._entries.put(key, _Entry(value, self._clock() + self._ttl))
        return value

    def _compact(self, value: Any) -> Any:
        """``value`` with the parts many tokens have in common (account, owner, grants,
        tenants) shared rather than one copy per token read from the store.

        Measured with tracemalloc: a cached token cost ~1 KB, a third of it strings
        and tuples equal to every other token's of the same owner.
        """
        if not isinstance(value, AuthToken):
            return value
        strings, tuples = self._strings, self._tuples
        if len(strings) + len(tuples) >= _COMMON_MAX:
            strings.clear()
            tuples.clear()
        owner = strings.setdefault(value.owner, value.owner)
        account = strings.setdefault(value.account, value.account)
        permissions = tuples.setdefault(value.permissions, value.permissions)
        tenants = tuples.setdefault(value.tenants, value.tenants)
        if (
            owner is value.owner
            and account is value.account
            and permissions is value.permissions
            and tenants is value.tenants
        ):
            return value
        return dataclasses.replace(
            value, owner=owner, account=account, permissions=permissions, tenants=tenants
        )

    def _landed(self, key: _Key, task: asyncio.Future[Any]) -> None:
        flight = self._inflight.get(key)
        if flight is not None and flight[1] is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters may all have gone away

    # -- answers derived from the cache ---------------------------------------------

    def unchanged_since(self, epoch: int) -> bool:
        """Whether an answer derived from this cache at ``epoch`` may still be served
        without asking it again: no change since (here or, through the shared counter,
        in another worker) and the store known reachable within the outage grace.

        Synchronous and I/O-free, for callers that remember what they derived (the
        authenticator's verified credentials); when it says no, they ask again through
        the lookups, which catch up, probe or raise as usual.
        """
        if epoch != self.epoch:
            return False
        shared = self._shared
        if shared is not None and shared.value != self._shared_applied:
            return False
        return self._clock() - self._last_reachable <= self._grace

    def trusted_until(self, kind: str, key: str) -> float:
        """When the cached entry for ``(kind, key)`` stops being trusted (this cache's
        clock), or -inf when it is not in memory."""
        entry = self._entries.peek((kind, key))
        return float("-inf") if entry is None else entry.expires

    def now(self) -> float:
        """This cache's clock (monotonic seconds), for :meth:`trusted_until`."""
        return self._clock()

    # -- workers sharing a change counter ------------------------------------------

    def follow(self, shared: SharedCounter, catch_up: Callable[[], Awaitable[None]]) -> None:
        """From now on, whenever ``shared`` moved, ``catch_up()`` (deliver the store's
        committed changes) runs before the next lookup is answered."""
        self._shared = shared
        self._shared_applied = shared.value
        self._catch_up_from_log = catch_up

    async def _catch_up(self) -> None:
        """One catch-up at a time; every lookup that saw the counter move waits for it.
        A failure (store unreachable) propagates: the request is refused, not decided
        on data known to be stale."""
        if self._catching_up is None:
            self._catching_up = asyncio.ensure_future(self._catch_up_once())
            self._catching_up.add_done_callback(self._caught_up)
        await asyncio.shield(self._catching_up)

    async def _catch_up_once(self) -> None:
        shared, catch_up = self._shared, self._catch_up_from_log
        if shared is None or catch_up is None:
            return
        seen = shared.value  # read first: a bump after this is caught up next time
        await catch_up()
        self._shared_applied = seen

    def _caught_up(self, task: asyncio.Future[None]) -> None:
        self._catching_up = None
        if not task.cancelled():
            task.exception()

    # -- store reachability ----------------------------------------------------------

    @property
    def store_reachable(self) -> bool:
        """False after a failed store read or ping, until one succeeds (for /readyz)."""
        return self._reachable

    async def ping(self) -> None:
        """Ping the store and record the outcome; raises StoreUnavailable when down."""
        try:
            await self._store.ping()
        except StoreUnavailable:
            self._mark_unreachable()
            raise
        self._mark_reachable()

    async def keepalive(self, interval: float | None = None) -> None:
        """Ping forever (run as a task) so entries keep serving while nothing changes."""
        period = self._grace / 3 if interval is None else interval
        while True:
            try:
                await self.ping()
            except StoreUnavailable:
                log.warning("store unreachable; known entries serve for %.0fs", self._grace)
            await asyncio.sleep(period)

    async def _probe(self) -> None:
        """Past the grace bound: ask the store before trusting memory again."""
        if not self._reachable and self._clock() - self._last_failure < _PROBE_INTERVAL:
            raise StoreUnavailable("store unreachable beyond the outage grace period")
        if self._probing is None:
            self._probing = asyncio.ensure_future(self.ping())
            self._probing.add_done_callback(self._probed)
        await asyncio.shield(self._probing)

    def _probed(self, task: asyncio.Future[None]) -> None:
        self._probing = None
        if not task.cancelled():
            task.exception()

    def _mark_reachable(self) -> None:
        self._reachable = True
        self._last_reachable = self._clock()

    def _mark_unreachable(self) -> None:
        self._reachable = False
        self._last_failure = self._clock()

    # -- change notification ------------------------------------------------------

    async def attach(self, store: Watchable) -> None:
        """Subscribe to ``store``'s change notifications."""
        await store.watch(self.apply_changes, self.reset)

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Drop exactly what ``changes`` touched and bump the epoch."""
        self._mark_reachable()
        if not changes:
            return
        for change in changes:
            if change.kind in _KEYED_KINDS and change.key is not None:
                self._entries.pop((change.kind, change.key))
            elif change.kind == "role" and change.account is not None:
                self._entries.pop(("roles", change.account))
            else:  # an account, "all", or a change we cannot place: drop everything.
                self._entries.clear()
                break
        # Every remembered "no such id" is tied to the epoch: none survives this.
        self.epoch += 1

    def reset(self) -> None:
        """Drop everything (the watcher may have missed changes) and bump the epoch."""
        self._mark_reachable()
        self._entries.clear()
        self._negative.clear()
        self._strings.clear()
        self._tuples.clear()
        self.epoch += 1

    def __len__(self) -> int:
        return len(self._entries)
