"""A flood of unknown tokens starves nothing.

Every request carrying a random, well-formed token id misses every cache. Such lookups
go through a fair limiter: a few store reads at once, shared between clients in turn,
the excess refused at once with 503 ``store_unavailable`` (never 401: the credential
was not checked). Readiness and change delivery use their own store connection.

The limiter's rules are tested directly; then a real `permgate serve` is flooded by
one client while another client's new token is answered within 2 s, a revocation made
by another process is enforced within a second, and /readyz stays 200 throughout.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway_procs import (
    Outcome,
    echo_upstream,
    outcome,
    seed_store,
    serve_sqlite,
    start_gateway_process,
    write_gateway_config,
)
from permgate.core.errors import StoreUnavailable
from permgate.core.token_secrets import token_id_of
from permgate.gateway.lookuplimit import FairLimiter, LookupsBusy, client_bucket
from permgate.manage.service import Actor, ModelService
from permgate.store import open_store
from pgtools import fresh_database

# -- the limiter -------------------------------------------------------------------------


class Reads:
    """Reads that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.order: list[str] = []
        self.gate = asyncio.Event()

    def read(self, name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            self.running += 1
            self.most = max(self.most, self.running)
            self.order.append(name)
            try:
                await self.gate.wait()
            finally:
                self.running -= 1
            return name

        return run


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_slots_reads_run_at_once() -> None:
    """However many lookups arrive, no more than ``slots`` reads run together."""
    limiter, reads = FairLimiter(slots=2, per_client=10), Reads()
    tasks = [asyncio.ensure_future(limiter.run("a", reads.read(f"a{n}"))) for n in range(6)]
    await _settle()
    assert reads.running == 2
    reads.gate.set()
    assert sorted(await asyncio.gather(*tasks)) == [f"a{n}" for n in range(6)]
    assert reads.most == 2


async def test_a_freed_slot_goes_to_the_next_client_in_turn() -> None:
    """A flooder's queue does not delay another client: slots alternate between them."""
    limiter, reads = FairLimiter(slots=1, per_client=8), Reads()
    first = asyncio.ensure_future(limiter.run("flood", reads.read("flood-0")))
    await _settle()
    tasks = [asyncio.ensure_future(limiter.run("flood", reads.read(f"flood-{n}"))) for n in (1, 2)]
    await _settle()
    tasks.append(asyncio.ensure_future(limiter.run("other", reads.read("other"))))
    await _settle()
    reads.gate.set()
    await asyncio.gather(first, *tasks)
    assert reads.order[:3] == ["flood-0", "flood-1", "other"]


DELAY = 0.2
REFUSALS = {
    "the client's queue is full": (8, "a"),
    "too many clients are waiting": (1, "b"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
async def test_excess_lookups_are_refused_after_a_short_delay(case: str) -> None:
    """Past the bounds, a lookup is refused with a 503-class error after
    ``refusal_delay`` (a flood answered at once would come straight back), never
    queued and never reaching the store."""
    max_clients, client = REFUSALS[case]
    limiter = FairLimiter(slots=1, per_client=2, max_clients=max_clients, refusal_delay=DELAY)
    reads = Reads()
    held = [asyncio.ensure_future(limiter.run("a", reads.read(f"a{n}"))) for n in range(3)]
    await _settle()  # one running, two waiting: client a's queue is full
    started = time.monotonic()
    with pytest.raises(LookupsBusy):
        await limiter.run(client, reads.read("refused"))
    assert DELAY <= time.monotonic() - started < DELAY + 0.5
    assert "refused" not in reads.order
    assert issubclass(LookupsBusy, StoreUnavailable)  # answered 503, not 401
    reads.gate.set()
    await asyncio.gather(*held)


async def test_a_lookup_waits_no_longer_than_max_wait() -> None:
    """A lookup still queued after ``max_wait`` gives up with LookupsBusy."""
    limiter, reads = FairLimiter(slots=1, max_wait=0.05), Reads()
    held = asyncio.ensure_future(limiter.run("a", reads.read("held")))
    await _settle()
    with pytest.raises(LookupsBusy):
        await limiter.run("b", reads.read("late"))
    reads.gate.set()
    await held


async def test_cancelled_waiters_give_back_nothing_they_did_not_hold() -> None:
    """Waiters cancelled while queued leave every slot usable afterwards."""
    limiter, reads = FairLimiter(slots=2, per_client=8), Reads()
    held = [asyncio.ensure_future(limiter.run("a", reads.read(f"h{n}"))) for n in range(2)]
    await _settle()
    waiting = [asyncio.ensure_future(limiter.run("b", reads.read(f"w{n}"))) for n in range(4)]
    await _settle()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert limiter.waiting == 0
    reads.gate.set()
    await asyncio.gather(*held)
    reads.running = reads.most = 0
    reads.gate.clear()
    again = [asyncio.ensure_future(limiter.run("c", reads.read(f"c{n}"))) for n in range(3)]
    await _settle()
    assert reads.running == 2  # both slots, and no more
    reads.gate.set()
    await asyncio.gather(*again)


BUCKETS = {
    "ipv4 is itself": ("192.0.2.7", "192.0.2.7"),
    "ipv6 counts by its /64": ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    "ipv6 zone is dropped": ("fe80::1%eth0", "fe80::/64"),
    "ipv4 on a dual-stack socket": ("::ffff:192.0.2.7", "192.0.2.7"),
    "unknown peer": ("", ""),
    "not an address": ("nonsense:", "nonsense:"),
}


@pytest.mark.parametrize("case", list(BUCKETS), ids=list(BUCKETS))
def test_clients_are_bucketed_by_address(case: str) -> None:
    """One queue per IPv4 address and per IPv6 /64 (one host often holds a whole /64)."""
    address, bucket = BUCKETS[case]
    assert client_bucket(address) == bucket


# -- a real gateway under a flood --------------------------------------------------------

READS = ("GET", "/policy/acme-prod/quotes/q1")
FLOOD_REQUESTS = 10_000  # upper bounds: the flood stops at whichever comes first
FLOOD_SECONDS = 4.0
FLOOD_CONCURRENCY = 800
NEW_TOKEN_BOUND = 2.0
CHANGE_BOUND = 1.0
# The legitimate client comes from another loopback address than the flood.
OTHER_CLIENT = "127.0.0.2"

# The flood runs in a process of its own, so the test's own requests are not queued
# behind it in one event loop. It prints how many answers of each status it got.
FLOOD = """
import asyncio, collections, json, sys, time
import aiohttp
from permgate.core.token_secrets import new_secret, new_token_id

url = sys.argv[1]
total, seconds, concurrency = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])

async def main():
    statuses, sent = collections.Counter(), 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker():
            nonlocal sent
            while sent < total and time.monotonic() < deadline:
                sent += 1
                headers = {"Authorization": "Bearer " + new_secret("pgt_", new_token_id())}
                async with http.get(url, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps(statuses))

asyncio.run(main())
"""


async def _watch_readiness(url: str, stop: asyncio.Event, seen: list[int]) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            async with http.get(url) as response:
                seen.append(response.status)
            await asyncio.sleep(0.1)


async def _until(ask: Callable[[], Awaitable[Outcome]], wanted: Outcome, within: float) -> float:
    """Ask until ``wanted``; the time it took, which must be under ``within``."""
    started = time.monotonic()
    while (answer := await ask()) != wanted:
        elapsed = time.monotonic() - started
        assert elapsed < within, f"still {answer} after {elapsed:.2f}s"
        await asyncio.sleep(0.02)
    took = time.monotonic() - started
    assert took < within, f"answered {wanted} only after {took:.2f}s"
    return took


@dataclass(frozen=True)
class Target:
    """A running gateway, its store's DSN and the seed's secrets."""

    url: str
    admin_url: str
    dsn: str
    tokens: dict[str, str]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """`permgate serve` on a seeded store of each kind."""
    async with echo_upstream() as upstream:
        if request.param == "sqlite":
            async with serve_sqlite(tmp_path, upstream) as served:
                dsn = f"sqlite://{tmp_path}/permgate.db"
                yield Target(served.url, served.admin_url, dsn, served.tokens)
            return
        async with fresh_database() as dsn:
            tokens = await seed_store(dsn)
            gateway = write_gateway_config(tmp_path, "flooded", store=dsn, upstream=upstream)
            async with aiohttp.ClientSession() as http:
                await start_gateway_process(gateway, http)
            try:
                yield Target(gateway.url, gateway.admin_url, dsn, tokens)
            finally:
                await gateway.stop()


@pytest.mark.slow
async def test_flood_of_unknown_tokens_delays_no_known_work(target: Target) -> None:
    """Under a flood of random tokens from one client: /readyz stays 200, another
    client's brand-new token is answered within 2 s, and a revocation made by another
    process is enforced within a second."""
    url = target.url + READS[1]
    connector = aiohttp.TCPConnector(local_addr=(OTHER_CLIENT, 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        alice = target.tokens["alice"]
        assert await outcome(other, "GET", url, alice) == (200, None)
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOOD,
            url,
            str(FLOOD_REQUESTS),
            str(FLOOD_SECONDS),
            str(FLOOD_CONCURRENCY),
            stdout=asyncio.subprocess.PIPE,
        )
        stop, readiness = asyncio.Event(), list[int]()
        ready = asyncio.ensure_future(
            _watch_readiness(target.admin_url + "/readyz", stop, readiness)
        )
        try:
            await asyncio.sleep(1.0)  # the flood is at full strength
            store = await open_store(target.dsn)
            try:
                service = ModelService(store)
                _, fresh = await service.create_token(
                    Actor.cli(), "bob", "fresh", ["quotes.read"], ["any"]
                )
                took_new = await _until(
                    lambda: outcome(other, "GET", url, fresh), (200, None), NEW_TOKEN_BOUND
                )
                alice_id = token_id_of("pgt_", alice)
                assert alice_id is not None
                await service.revoke_token(Actor.cli(), alice_id)
                took_revoke = await _until(
                    lambda: outcome(other, "GET", url, alice),
                    (401, "revoked_token"),
                    CHANGE_BOUND,
                )
            finally:
                await store.close()
            assert flood.returncode is None, "the flood ended before the checks did"
        finally:
            stop.set()
            await ready
            out, _ = await asyncio.wait_for(flood.communicate(), FLOOD_SECONDS + 10)
    statuses = {int(k): v for k, v in orjson.loads(out).items()}
    print(
        f"\nflood: {statuses}; new token answered in {took_new:.2f}s, revocation enforced "
        f"in {took_revoke:.2f}s; /readyz {collections.Counter(readiness)}"
    )
    assert sum(statuses.values()) >= 1000, "the flood never got going: the test proves nothing"
    assert set(statuses) <= {401, 503}
    assert readiness and set(readiness) == {200}
