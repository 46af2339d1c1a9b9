"""The gateway's decision cache never keeps a decision made from data that changed
while it was being made: a race between a request and a commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from memstore import MemStore
from permgate.core.endpoints import Endpoint, EndpointMap, TenantSource
from permgate.core.model import Principal, Role, RoleAssignment, Tenant
from permgate.gateway.authn import Authenticator, Identity
from permgate.gateway.modelcache import ModelCache
from permgate.gateway.pipeline import Gateway
from permgate.gateway.proxy import Upstream

BY_PATH = TenantSource("path_param", "tenantLocator")
MAP = EndpointMap(
    endpoints=(
        Endpoint("quotes.create", frozenset({"POST"}), "/p/{tenantLocator}/quotes",
                 ("quotes.write",), tenant=BY_PATH),
    ),
    default_tenant=BY_PATH,
)  # fmt: skip
ALICE = Principal("alice", "acme", "user", (RoleAssignment("agent"),), ("acme-prod",))
AGENT = Role("acme", "agent", "Agent", ("quotes.write",))


class _Observer:
    def admit_now(self) -> bool:
        return True

    async def admit(self) -> None:
        return None

    def record(self, outcome: object) -> None:
        return None

    def refused(self, outcome: object) -> None:
        return None


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Gateway, ModelCache, MemStore]]:
    store = MemStore()
    store.put_tenant(Tenant("acme-prod", "acme"), notify=False)
    store.put_principal(ALICE, notify=False)
    store.put_role(AGENT, notify=False)
    model = ModelCache(store)
    await model.attach(store)
    gateway = Gateway(
        endpoint_map=MAP,
        model=model,
        authenticator=Authenticator(model, token_prefix="pgt_", jwt=None),
        upstream=Upstream("http://127.0.0.1:9", timeout_seconds=1.0),
        observer=_Observer(),
    )
    yield gateway, model, store


async def test_decision_made_across_a_change_is_not_cached(
    setup: tuple[Gateway, ModelCache, MemStore],
) -> None:
    """A role edited while a decision reads its inputs: that decision is served to the
    request in flight but never cached; the next request decides afresh."""
    gateway, model, store = setup
    identity = Identity(ALICE, None, None, "j:alice")
    match = MAP.match("POST", "/p/acme-prod/quotes")
    assert match is not None
    epochs = (model.epoch, 0)

    store.gate = asyncio.Event()  # hold the roles read...
    deciding = asyncio.create_task(
        gateway.evaluator.permit(identity, match, {}, gateway.memo, epochs)
    )
    await asyncio.sleep(0.01)
    store.put_role(Role("acme", "agent", "Agent", ()))  # ...commit a change meanwhile...
    store.gate.set()  # ...and let the read finish with whatever it reads
    await deciding

    fresh_epochs = (model.epoch, 0)
    cached, _, hit = await gateway.evaluator.permit(identity, match, {}, gateway.memo, fresh_epochs)
    assert not hit
    assert not cached.decision.allowed  # the edited role, not the old one


async def test_change_during_authentication_is_not_cached_under_the_new_epoch(
    setup: tuple[Gateway, ModelCache, MemStore],
) -> None:
    """The principal lost its role after the request authenticated (a stale snapshot):
    the decision made from that snapshot must not be cached for the next request."""
    gateway, model, store = setup
    stale = Identity(ALICE, None, None, "j:alice")
    match = MAP.match("POST", "/p/acme-prod/quotes")
    assert match is not None
    epochs = (model.epoch, 0)  # taken before authentication, as the pipeline does
    without_role = Principal("alice", "acme", "user", (), ("acme-prod",))
    store.put_principal(without_role)  # committed while the request authenticated

    in_flight, _, _ = await gateway.evaluator.permit(stale, match, {}, gateway.memo, epochs)
    assert in_flight.decision.allowed  # the racing request saw the old snapshot

    fresh = Identity(without_role, None, None, "j:alice")
    cached, _, hit = await gateway.evaluator.permit(
        fresh, match, {}, gateway.memo, (model.epoch, 0)
    )
    assert not hit
    assert not cached.decision.allowed


async def test_unchanged_model_serves_the_cached_decision(
    setup: tuple[Gateway, ModelCache, MemStore],
) -> None:
    """With nothing changed, the second identical request is a cache hit."""
    gateway, model, _ = setup
    identity = Identity(ALICE, None, None, "j:alice")
    match = MAP.match("POST", "/p/acme-prod/quotes")
    assert match is not None
    first, _, hit = await gateway.evaluator.permit(
        identity, match, {}, gateway.memo, (model.epoch, 0)
    )
    assert (first.decision.allowed, hit) == (True, False)
    again, _, hit = await gateway.evaluator.permit(
        identity, match, {}, gateway.memo, (model.epoch, 0)
    )
    assert (again.decision.allowed, hit) == (True, True)
