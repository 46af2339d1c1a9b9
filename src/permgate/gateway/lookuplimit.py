"""A fair limit on store reads for keys the caller chooses (unknown token ids).

A flood of requests carrying random, well-formed token ids misses every cache, and
each miss would read the store. :class:`FairLimiter` lets at most ``slots`` such reads
run at once; further ones wait in a queue per client (by the peer address that
:data:`LOOKUP_CLIENT` carries for the current request), and a freed slot goes to the
clients in turn (round robin), so a flood from one address (one IPv6 /64) cannot take
every slot from another. Behind a proxy every client has the proxy's address and
shares one queue: the limit still bounds the store's load, but fairness is then
between proxies, not end clients.

A lookup past the bounds (its client's queue full, too many clients queued) is
refused after ``refusal_delay``, and a lookup still queued after ``max_wait`` is
refused then: :class:`LookupsBusy`, a 503 ``store_unavailable`` answer, never a 401,
because the credential was not checked (a new valid token must not be reported
invalid). The refusal is delayed on purpose: a flood answered at once comes straight
back, and the gateway would spend its time answering it instead of everyone else.
Memory is bounded by ``max_clients * per_client`` queued lookups.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Final, NoReturn, TypeVar

from permgate.core.errors import StoreUnavailable

__all__ = ["LOOKUP_CLIENT", "FairLimiter", "LookupsBusy", "client_bucket"]

# Who the current request comes from (its peer address); "" when not known.
LOOKUP_CLIENT: Final[ContextVar[str]] = ContextVar("permgate_lookup_client", default="")

_T = TypeVar("_T")


def client_bucket(address: str) -> str:
    """Who shares one queue: an IPv4 address, or an IPv6 address's /64 (one host
    commonly holds a whole /64, so its addresses count as one client)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class LookupsBusy(StoreUnavailable):
    """Too many lookups of unknown keys are queued: answered 503, never 401."""


class FairLimiter:
    """At most ``slots`` reads at once; waiters served per client in turn.

    Args:
        slots: reads allowed to run at the same time.
        per_client: reads one client may have waiting.
        max_clients: clients that may have reads waiting at the same time.
        max_wait: seconds a read may wait for a slot.
        refusal_delay: seconds before a lookup past the bounds is refused.

    Runs on the event loop's thread only.
    """

    def __init__(
        self,
        *,
        slots: int = 4,
        per_client: int = 8,
        max_clients: int = 1024,
        max_wait: float = 1.0,
        refusal_delay: float = 1.0,
    ) -> None:
        self._free = slots
        self._refusal_delay = refusal_delay
        self._per_client = per_client
        self._max_clients = max_clients
        self._max_wait = max_wait
        # client -> its waiters; dict order is the round-robin order.
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    @property
    def waiting(self) -> int:
        """How many reads are waiting for a slot (for tests and metrics)."""
        return sum(len(queue) for queue in self._waiting.values())

    async def run(self, client: str, read: Callable[[], Awaitable[_T]]) -> _T:
        """``read()`` once a slot is free for ``client``; raises :class:`LookupsBusy`."""
        await self._acquire(client_bucket(client))
        try:
            return await read()
        finally:
            self._release()

    async def _acquire(self, client: str) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        queue = self._waiting.get(client)
        if queue is None:
            if len(self._waiting) >= self._max_clients:
                await self._refuse("too many clients are waiting to look up unknown credentials")
            queue = self._waiting[client] = deque()
        elif len(queue) >= self._per_client:
            await self._refuse("too many lookups of unknown credentials from this client")
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            async with asyncio.timeout(self._max_wait):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._release()  # granted just as we gave up: pass the slot on
            else:
                granted.cancel()
                self._forget(client, granted)
            if isinstance(exc, TimeoutError):
                raise LookupsBusy("timed out waiting to look up an unknown credential") from None
            raise

    async def _refuse(self, why: str) -> NoReturn:
        # Not at once: a flood answered at once comes straight back, and the gateway
        # would spend its time answering it instead of everyone else.
        await asyncio.sleep(self._refusal_delay)
        raise LookupsBusy(why)

    def _forget(self, client: str, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(client)
        if queue is None:
            return
        try:
            queue.remove(granted)
        except ValueError:
            return
        if not queue:
            del self._waiting[client]

    def _release(self) -> None:
        """Hand the slot to the next client in turn, or free it."""
        while self._waiting:
            client = next(iter(self._waiting))
            queue = self._waiting.pop(client)
            granted = queue.popleft()
            if queue:
                self._waiting[client] = queue  # to the back of the round
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1
