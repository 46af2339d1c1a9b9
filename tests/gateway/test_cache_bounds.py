"""The request path's memory stays bounded under token churn: every cache holds at most
its bound however many distinct credentials arrive, and what a bound pushed out of
memory is read from the store again and answered correctly."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from memstore import MemStore
from permgate.core.decision import Decision, Reason
from permgate.core.model import AuthToken, Principal, Tenant
from permgate.core.token_secrets import hash_secret, new_secret, new_token_id
from permgate.gateway.authn import Authenticator, AuthFailure
from permgate.gateway.decision_cache import DecisionCache
from permgate.gateway.evaluate import Verdict
from permgate.gateway.generations import Generations
from permgate.gateway.modelcache import ModelCache

ALICE = Principal("alice", "acme", "user", (), ("acme-prod",))


class Clock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_token(owner: str = "alice") -> tuple[AuthToken, str]:
    """A token of ``owner`` and its secret; its shared parts are equal to every other
    token's but separate objects, as the store hands them over."""
    token_id = new_token_id()
    secret = new_secret("pgt_", token_id)
    token = AuthToken(
        token_id,
        "".join([owner]),
        "".join(["ac", "me"]),
        f"token {token_id}",
        permissions=tuple(["quotes.read"]),
        tenants=tuple(["acme-prod"]),
        secret_hash=hash_secret(secret),
    )
    return token, secret


def allowed(endpoint: str = "quotes.get") -> Verdict:
    return Verdict(Decision(True, Reason.ALLOWED, endpoint, "acme-prod", ("quotes.read",)))


@pytest.fixture
def store() -> MemStore:
    s = MemStore()
    s.put_tenant(Tenant("acme-prod", "acme"), notify=False)
    s.put_principal(ALICE, notify=False)
    return s


# -- the two-generation map every cache uses ------------------------------------------


def test_generations_hold_at_most_their_limit() -> None:
    """10,000 distinct keys leave at most ``limit`` entries."""
    held: Generations[int, str] = Generations(100)
    for n in range(10_000):
        held.put(n, "v")
        assert len(held) <= 100
    assert held.get(9_999) == "v"
    assert held.get(0) is None


def test_an_entry_in_use_survives_a_stream_of_new_ones() -> None:
    """An entry read between every few new ones is never evicted by them."""
    held: Generations[int, str] = Generations(10)
    held.put(-1, "hot")
    for n in range(1_000):
        held.put(n, "cold")
        if n % 4 == 0:
            assert held.get(-1) == "hot"


def test_a_popped_key_is_gone_from_both_generations() -> None:
    """``pop`` forgets a key whichever generation holds it."""
    held: Generations[str, int] = Generations(4)
    held.put("a", 1)
    held.put("b", 2)
    held.put("c", 3)  # a and b are now the older generation
    held.pop("a")
    held.pop("c")
    assert (held.get("a"), held.get("b"), held.get("c")) == (None, 2, None)


def test_a_bound_below_one_is_refused() -> None:
    """A cache that could hold nothing is a configuration mistake, said as such."""
    with pytest.raises(ValueError, match="at least 1, got 0"):
        Generations(0)


# -- the model cache --------------------------------------------------------------------


async def test_model_cache_holds_at_most_its_bound_after_many_tokens(store: MemStore) -> None:
    """1,000 distinct tokens leave at most ``max_entries`` entries in memory."""
    cache = ModelCache(store, max_entries=50)
    for _ in range(1_000):
        token, _ = a_token()
        store.put_token(token, notify=False)
        assert await cache.token(token.id) == token
        assert len(cache) <= 50


async def test_unknown_token_ids_are_bounded_too(store: MemStore) -> None:
    """ "No such id" answers for 1,000 random ids stay within their own bound."""
    cache = ModelCache(store, negative_max_entries=20)
    for _ in range(1_000):
        assert await cache.token(new_token_id()) is None
    assert len(cache._negative) <= 20
    assert len(cache) == 0


async def test_a_token_pushed_out_of_memory_is_read_from_the_store_again(
    store: MemStore,
) -> None:
    """The first of many tokens, evicted by the bound, is still found: one store read."""
    cache = ModelCache(store, max_entries=10)
    first, _ = a_token()
    store.put_token(first, notify=False)
    await cache.token(first.id)
    for _ in range(100):
        token, _ = a_token()
        store.put_token(token, notify=False)
        await cache.token(token.id)
    store.reads.clear()
    assert await cache.token(first.id) == first
    assert store.reads["token"] == 1


async def test_cached_tokens_share_their_common_parts(store: MemStore) -> None:
    """Two tokens of one owner hold one copy of the owner, account, grants and tenants."""
    cache = ModelCache(store)
    one, _ = a_token()
    two, _ = a_token()
    store.put_token(one, notify=False)
    store.put_token(two, notify=False)
    a, b = await cache.token(one.id), await cache.token(two.id)
    assert a is not None and b is not None
    assert (a, b) == (one, two)
    assert a.owner is b.owner and a.account is b.account
    assert a.permissions is b.permissions and a.tenants is b.tenants
    assert a.secret_hash == one.secret_hash and b.secret_hash == two.secret_hash


# -- authentication over bounded caches --------------------------------------------------


async def test_every_cache_stays_bounded_while_every_token_authenticates(
    store: MemStore,
) -> None:
    """500 tokens used once each are all accepted; the model cache and the remembered
    credentials hold no more than their bounds."""
    cache = ModelCache(store, max_entries=40)
    authn = Authenticator(cache, token_prefix="pgt_", jwt=None, known_max=30)
    for _ in range(500):
        token, secret = a_token()
        store.put_token(token, notify=False)
        identity = await authn.authenticate(f"Bearer {secret}")
        assert identity.token is not None and identity.token.id == token.id
        assert len(cache) <= 40 and authn.known_credentials <= 30


async def test_a_token_evicted_everywhere_still_authenticates_and_revocation_bites(
    store: MemStore,
) -> None:
    """The first token, pushed out of every cache by 200 others, is verified from the
    store again; once revoked (a change delivered), it is refused."""
    cache = ModelCache(store, max_entries=20)
    await cache.attach(store)
    authn = Authenticator(cache, token_prefix="pgt_", jwt=None, known_max=10)
    first, first_secret = a_token()
    store.put_token(first, notify=False)
    await authn.authenticate(f"Bearer {first_secret}")
    for _ in range(200):
        token, secret = a_token()
        store.put_token(token, notify=False)
        await authn.authenticate(f"Bearer {secret}")
    store.reads.clear()
    identity = await authn.authenticate(f"Bearer {first_secret}")
    assert identity.token is not None and identity.token.id == first.id
    assert store.reads["token"] == 1
    store.put_token(replace(first, revoked_at=datetime(2026, 1, 1, tzinfo=UTC)))
    with pytest.raises(AuthFailure) as refused:
        await authn.authenticate(f"Bearer {first_secret}")
    assert refused.value.reason == "revoked_token"


# -- the decision cache -------------------------------------------------------------------


async def test_decision_cache_holds_at_most_its_bound(store: MemStore) -> None:
    """1,000 distinct credentials leave at most ``max_entries`` cached verdicts."""
    memo = DecisionCache(ModelCache(store), ttl_seconds=30.0, max_entries=64)
    for n in range(1_000):
        snapshot = memo.snapshot()
        memo.put((f"t:{n}", "quotes.get", "acme-prod"), snapshot, allowed())
        assert len(memo) <= 64
    assert memo.get(("t:999", "quotes.get", "acme-prod"), memo.snapshot()) == allowed()


async def test_decision_cache_drops_what_is_past_two_ttls(store: MemStore) -> None:
    """Credentials used once, at a steady pace, leave only the last two TTLs' verdicts:
    below the size bound, expired entries are not kept."""
    clock = Clock()
    memo = DecisionCache(ModelCache(store), ttl_seconds=10.0, max_entries=100_000, clock=clock)
    for n in range(1_000):
        memo.put((f"t:{n}", "quotes.get", "acme-prod"), memo.snapshot(), allowed())
        clock.now += 0.1  # ten a second: 100 per TTL
    assert len(memo) <= 200
    assert memo.get(("t:999", "quotes.get", "acme-prod"), memo.snapshot()) == allowed()


async def test_decision_cache_serves_nothing_past_the_ttl(store: MemStore) -> None:
    """A verdict older than the TTL is not served (the safety net still holds)."""
    clock = Clock()
    memo = DecisionCache(ModelCache(store), ttl_seconds=10.0, max_entries=10, clock=clock)
    key = ("t:1", "quotes.get", "acme-prod")
    memo.put(key, memo.snapshot(), allowed())
    clock.now += 9.9
    assert memo.get(key, memo.snapshot()) == allowed()
    clock.now += 0.2
    assert memo.get(key, memo.snapshot()) is None


async def test_equal_verdicts_are_one_object(store: MemStore) -> None:
    """Many credentials with the same verdict hold one shared verdict, not a copy each."""
    memo = DecisionCache(ModelCache(store), ttl_seconds=30.0, max_entries=100)
    for n in range(10):
        memo.put((f"t:{n}", "quotes.get", "acme-prod"), memo.snapshot(), allowed())
    held = {id(memo.get((f"t:{n}", "quotes.get", "acme-prod"), memo.snapshot())) for n in range(10)}
    assert len(held) == 1


async def test_a_model_change_empties_the_decision_cache(store: MemStore) -> None:
    """Verdicts made before a change are never served after it, and their memory goes
    with the next verdict stored."""
    model = ModelCache(store)
    await model.attach(store)
    memo = DecisionCache(model, ttl_seconds=30.0, max_entries=100)
    for n in range(10):
        memo.put((f"t:{n}", "quotes.get", "acme-prod"), memo.snapshot(), allowed())
    store.put_tenant(Tenant("other", "acme"))  # any change moves the epoch
    assert memo.get(("t:1", "quotes.get", "acme-prod"), memo.snapshot()) is None
    memo.put(("t:new", "quotes.get", "acme-prod"), memo.snapshot(), allowed())
    assert len(memo) == 1
