"""ModelCache: hits without I/O, exact invalidation, single flight, fail-closed outages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from memstore import MemStore
from permgate.core.errors import StoreUnavailable
from permgate.core.model import AuthToken, Principal, Role, Tenant
from permgate.gateway.modelcache import ModelCache
from permgate.store.base import Change


class Clock:
    """A hand-driven monotonic clock, so time-bound tests never sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> MemStore:
    s = MemStore()
    s.put_tenant(Tenant("acme-prod", "acme"))
    s.put_tenant(Tenant("acme-test", "acme", "TEST"))
    s.put_principal(Principal("alice", "acme"))
    s.put_principal(Principal("bob", "acme"))
    s.put_role(Role("acme", "agent", "Agent", ("quotes.read",)))
    s.put_role(Role("globex", "agent", "Agent", ("quotes.write",)))
    s.put_token(AuthToken("t1", "alice", "acme", "ci"))
    s.put_token(AuthToken("t2", "bob", "acme", "ci"))
    s.reads.clear()
    return s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(store: MemStore, clock: Clock) -> ModelCache:
    c = ModelCache(store, clock=clock, outage_grace_seconds=30.0, negative_ttl_seconds=5.0)
    await c.attach(store)
    return c


Lookup = Callable[[ModelCache], Awaitable[object]]
LOOKUPS: dict[str, tuple[str, Lookup]] = {
    "tenant": ("tenant", lambda c: c.tenant("acme-prod")),
    "principal": ("principal", lambda c: c.principal("alice")),
    "token": ("token", lambda c: c.token("t1")),
    "roles": ("roles", lambda c: c.roles("acme")),
}


async def fill_all(cache: ModelCache) -> None:
    for lookup in (
        lambda c: c.tenant("acme-prod"),
        lambda c: c.tenant("acme-test"),
        lambda c: c.principal("alice"),
        lambda c: c.principal("bob"),
        lambda c: c.token("t1"),
        lambda c: c.token("t2"),
        lambda c: c.roles("acme"),
        lambda c: c.roles("globex"),
    ):
        await lookup(cache)


@pytest.mark.parametrize("name", list(LOOKUPS), ids=list(LOOKUPS))
async def test_hit_does_no_store_read(cache: ModelCache, store: MemStore, name: str) -> None:
    """The second lookup of a key is answered from memory."""
    kind, lookup = LOOKUPS[name]
    first = await lookup(cache)
    second = await lookup(cache)
    assert first == second
    assert first is not None
    assert store.reads == {kind: 1}


async def test_hit_serves_old_snapshot_until_change_arrives(
    cache: ModelCache, store: MemStore
) -> None:
    """Memory, not the store, answers a hit: a write is seen once its change arrives."""
    await cache.principal("alice")
    store.put_principal(Principal("alice", "acme", disabled=True), notify=False)
    assert (await cache.principal("alice")) == Principal("alice", "acme")
    store.emit("principal", "acme", "alice")
    assert (await cache.principal("alice")) == Principal("alice", "acme", disabled=True)


# change -> the reads a full re-lookup of every key then needs
CHANGES = [
    ("principal", Change(1, "principal", "acme", "alice"), {"principal": 1}),
    ("token", Change(1, "token", "acme", "t2"), {"token": 1}),
    ("tenant", Change(1, "tenant", "acme", "acme-test"), {"tenant": 1}),
    ("role", Change(1, "role", "globex", "agent"), {"roles": 1}),
    (
        "account",
        Change(1, "account", "acme", None),
        {"tenant": 2, "principal": 2, "token": 2, "roles": 2},
    ),
    ("all", Change(1, "all", None, None), {"tenant": 2, "principal": 2, "token": 2, "roles": 2}),
]


@pytest.mark.parametrize(
    ("change", "rereads"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES]
)
async def test_change_drops_exactly_what_changed(
    cache: ModelCache, store: MemStore, change: Change, rereads: dict[str, int]
) -> None:
    """A change invalidates its own key (a role: its account's roles) and nothing else."""
    await fill_all(cache)
    store.reads.clear()
    cache.apply_changes([change])
    await fill_all(cache)
    assert dict(store.reads) == rereads


async def test_change_batch_bumps_epoch_once(cache: ModelCache) -> None:
    """Each delivered batch moves the epoch, so decisions cached before it are unreachable."""
    before = cache.epoch
    cache.apply_changes([Change(1, "token", "acme", "t1"), Change(2, "token", "acme", "t2")])
    assert cache.epoch == before + 1


async def test_empty_batch_keeps_epoch(cache: ModelCache) -> None:
    """A delivery with nothing in it invalidates nothing."""
    before = cache.epoch
    cache.apply_changes([])
    assert cache.epoch == before


async def test_reset_drops_everything_and_bumps_epoch(cache: ModelCache, store: MemStore) -> None:
    """After a reset every key is read again."""
    await fill_all(cache)
    store.reads.clear()
    before = cache.epoch
    store.emit_reset()
    await fill_all(cache)
    assert cache.epoch == before + 1
    assert dict(store.reads) == {"tenant": 2, "principal": 2, "token": 2, "roles": 2}


async def test_unknown_id_is_cached_briefly(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """A flood of lookups for an unknown id reads the store once per negative TTL."""
    for _ in range(10):
        assert (await cache.token("nope")) is None
    assert store.reads == {"token": 1}
    clock.now += 5.1
    assert (await cache.token("nope")) is None
    assert store.reads == {"token": 2}


async def test_change_drops_negative_entry(cache: ModelCache, store: MemStore) -> None:
    """A principal created after a miss is found on the next request, not after the TTL."""
    assert (await cache.principal("carol")) is None
    store.put_principal(Principal("carol", "acme"))
    assert (await cache.principal("carol")) == Principal("carol", "acme")


async def test_unknown_account_roles_are_negative(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """An account without roles is an empty mapping, re-read after the negative TTL."""
    assert dict(await cache.roles("initech")) == {}
    clock.now += 5.1
    await cache.roles("initech")
    assert store.reads == {"roles": 2}


async def test_roles_mapping_is_read_only(cache: ModelCache) -> None:
    """Callers cannot corrupt the shared cached roles."""
    roles = await cache.roles("acme")
    with pytest.raises(TypeError):
        roles["x"] = Role("acme", "x", "X")  # type: ignore[index]


async def test_positive_entries_expire_as_safety_net(store: MemStore, clock: Clock) -> None:
    """Even with no change notified, an entry is re-read after ``ttl_seconds``."""
    cache = ModelCache(store, ttl_seconds=60.0, outage_grace_seconds=600.0, clock=clock)
    await cache.tenant("acme-prod")
    clock.now += 59
    await cache.tenant("acme-prod")
    assert store.reads == {"tenant": 1}
    clock.now += 2
    await cache.tenant("acme-prod")
    assert store.reads == {"tenant": 2}


async def test_lru_bound_is_respected(store: MemStore) -> None:
    """The cache never holds more than ``max_entries`` entries."""
    cache = ModelCache(store, max_entries=2)
    await fill_all(cache)
    assert len(cache) == 2


async def test_concurrent_misses_share_one_read(cache: ModelCache, store: MemStore) -> None:
    """20 requests for a new token at once cost one store read."""
    store.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(cache.token("t1")) for _ in range(20)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*waiters)
    assert {r.id for r in results if r is not None} == {"t1"}
    assert len(results) == 20
    assert store.reads == {"token": 1}


async def test_cancelled_waiter_does_not_cancel_shared_read(
    cache: ModelCache, store: MemStore
) -> None:
    """A client that goes away does not fail the others waiting on the same read."""
    store.gate = asyncio.Event()
    first = asyncio.ensure_future(cache.principal("alice"))
    second = asyncio.ensure_future(cache.principal("alice"))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert (await second) == Principal("alice", "acme")
    assert store.reads == {"principal": 1}


async def test_read_overtaken_by_change_is_not_cached(cache: ModelCache, store: MemStore) -> None:
    """A read in flight when a change lands may be stale, so it is not kept."""
    store.gate = asyncio.Event()
    pending = asyncio.ensure_future(cache.principal("alice"))
    await asyncio.sleep(0)
    store.emit("principal", "acme", "alice")
    store.gate.set()
    await pending
    store.gate = None
    await cache.principal("alice")
    assert store.reads == {"principal": 2}


async def test_attach_subscribes_to_changes(store: MemStore) -> None:
    """``attach`` registers the cache with the store's watcher."""
    cache = ModelCache(store)
    await cache.attach(store)
    before = cache.epoch
    store.emit("tenant", "acme", "acme-prod")
    assert cache.epoch == before + 1


async def test_outage_miss_raises(cache: ModelCache, store: MemStore) -> None:
    """An id not in memory cannot be decided while the store is down: 503, fail closed."""
    store.down = True
    with pytest.raises(StoreUnavailable):
        await cache.token("t1")
    assert not cache.store_reachable


async def test_outage_miss_burst_does_not_hammer_store(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """Right after a failure, further misses are refused without trying the store."""
    store.down = True
    for token_id in ("a", "b", "c"):
        with pytest.raises(StoreUnavailable):
            await cache.token(token_id)
    assert store.reads == {"token": 1}
    store.down = False
    clock.now += 1.1
    assert (await cache.token("t1")) is not None
    assert cache.store_reachable


async def test_outage_known_entry_served_within_grace(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """Entries in memory keep serving while the store is down, up to the grace bound."""
    await cache.token("t1")
    store.down = True
    clock.now += 29.9
    assert (await cache.token("t1")) is not None
    assert store.reads == {"token": 1}


async def test_outage_known_entry_refused_after_grace(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """Past the grace bound a known entry is refused too, until the store answers."""
    await cache.token("t1")
    store.down = True
    clock.now += 30.1
    with pytest.raises(StoreUnavailable):
        await cache.token("t1")
    with pytest.raises(StoreUnavailable):
        await cache.token("t1")
    assert store.reads["ping"] == 1  # the second refusal did not ping again
    store.down = False
    clock.now += 1.1
    assert (await cache.token("t1")) is not None


async def test_quiet_store_is_probed_once_past_grace(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """With nothing heard for the grace period, a hit pings once and then serves."""
    await cache.token("t1")
    clock.now += 31
    for _ in range(5):
        assert (await cache.token("t1")) is not None
    assert store.reads == {"token": 1, "ping": 1}


async def test_change_delivery_proves_store_reachable(
    cache: ModelCache, store: MemStore, clock: Clock
) -> None:
    """A change delivery refreshes "last known reachable", so hits need no probe."""
    await cache.token("t1")
    clock.now += 29
    store.emit("tenant", "acme", "acme-prod")
    clock.now += 29
    await cache.token("t1")
    assert store.reads == {"token": 1}


async def test_ping_records_reachability(cache: ModelCache, store: MemStore) -> None:
    """A failed ping marks the store unreachable and a successful one clears it."""
    store.down = True
    with pytest.raises(StoreUnavailable):
        await cache.ping()
    assert not cache.store_reachable
    store.down = False
    await cache.ping()
    assert cache.store_reachable


# -- unknown ids: their own bounded memory, tied to the epoch ----------------------------


async def test_unknown_ids_never_evict_known_entries(store: MemStore) -> None:
    """A flood of unknown ids fills the negative LRU, not the one known entries live in."""
    cache = ModelCache(store, max_entries=4, negative_max_entries=8)
    await cache.token("t1")
    for n in range(100):
        assert await cache.token(f"unknown-{n}") is None
    store.reads.clear()
    assert await cache.token("t1") is not None
    assert store.reads["token"] == 0


async def test_any_change_forgets_every_unknown_id(cache: ModelCache, store: MemStore) -> None:
    """An unknown id is remembered within one epoch: any change makes it be read again."""
    assert await cache.token("t9") is None
    store.put_tenant(Tenant("other", "acme"))  # unrelated change: the epoch moves
    store.reads.clear()
    assert await cache.token("t9") is None
    assert store.reads["token"] == 1


# -- following a change counter shared by workers ----------------------------------------


REVOKED_AT = datetime(2026, 1, 1, tzinfo=UTC)


class Counter:
    """A stand-in for the workers' shared counter: a plain value."""

    def __init__(self) -> None:
        self.value = 0


async def test_moved_counter_catches_up_before_answering(
    cache: ModelCache, store: MemStore
) -> None:
    """A lookup after the counter moved waits for the catch-up, which sees the change."""
    counter = Counter()
    caught_up: list[int] = []
    revoked = AuthToken("t1", "alice", "acme", "ci", revoked_at=REVOKED_AT)

    async def catch_up() -> None:
        store.put_token(revoked)  # what a store's delivery does: hand the change over
        caught_up.append(counter.value)

    cache.follow(counter, catch_up)
    assert await cache.token("t1") == AuthToken("t1", "alice", "acme", "ci")
    counter.value += 1  # another worker committed the revocation
    assert await cache.token("t1") == revoked
    assert caught_up == [1]
    await cache.token("t1")
    assert caught_up == [1], "no catch-up while the counter stays put"


async def test_concurrent_lookups_share_one_catch_up(cache: ModelCache) -> None:
    """Many lookups that see the counter move wait for a single catch-up."""
    counter = Counter()
    calls = 0
    gate = asyncio.Event()

    async def catch_up() -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    cache.follow(counter, catch_up)
    counter.value = 3
    lookups = [asyncio.ensure_future(cache.principal("alice")) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*lookups)
    assert calls == 1


async def test_failed_catch_up_refuses_and_retries(cache: ModelCache) -> None:
    """A catch-up that cannot reach the store fails the lookup closed; the next retries."""
    counter = Counter()
    down = True

    async def catch_up() -> None:
        if down:
            raise StoreUnavailable("store down")

    cache.follow(counter, catch_up)
    counter.value = 1
    with pytest.raises(StoreUnavailable):
        await cache.principal("alice")
    down = False
    assert await cache.principal("alice") is not None


# -- answers derived from the cache ---------------------------------------------------------


async def test_derived_answer_is_stale_after_a_change(cache: ModelCache, store: MemStore) -> None:
    """What a caller derived at an epoch may be served again only until the next change."""
    epoch = cache.epoch
    assert cache.unchanged_since(epoch)
    store.put_token(AuthToken("t9", "alice", "acme", "ci"))
    assert not cache.unchanged_since(epoch)


async def test_derived_answer_is_stale_once_another_worker_moved_the_counter(
    cache: ModelCache,
) -> None:
    """A change committed through another worker (the shared counter moved, not yet
    caught up) makes a derived answer stale before this worker has even read it."""
    counter = Counter()

    async def catch_up() -> None:
        return None

    cache.follow(counter, catch_up)
    epoch = cache.epoch
    assert cache.unchanged_since(epoch)
    counter.value += 1
    assert not cache.unchanged_since(epoch)


async def test_derived_answer_is_stale_past_the_outage_grace(
    cache: ModelCache, clock: Clock
) -> None:
    """Past the outage grace since the store was last known reachable, memory is not
    trusted for derived answers either."""
    epoch = cache.epoch
    clock.now += 29.0
    assert cache.unchanged_since(epoch)
    clock.now += 2.0  # the fixture's grace is 30 s
    assert not cache.unchanged_since(epoch)


async def test_trusted_until_is_the_entry_expiry(cache: ModelCache, clock: Clock) -> None:
    """A cached record is trusted until its TTL; an absent one not at all."""
    await cache.principal("alice")
    assert cache.trusted_until("principal", "alice") == clock.now + 300.0
    assert cache.trusted_until("principal", "nobody") == float("-inf")
