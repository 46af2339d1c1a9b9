"""The service enforces every rule for every caller, and its refusals carry a reason,
so that the admin API and the console render them instead of checking first."""

from __future__ import annotations

import pytest

from permgate.core.errors import Forbidden, NotFound
from permgate.manage.service import Actor, ModelService
from permgate.store import Store

CLI = Actor.cli()


async def _actor(store: Store, principal_id: str) -> Actor:
    principal = await store.get_principal(principal_id)
    assert principal is not None
    return Actor.of(principal)


async def _principals_writer(acme: ModelService, store: Store) -> Actor:
    """alice: every permission but not admin, scoped to acme-prod only."""
    await acme.set_principal_roles(CLI, "alice", [("full-access", None)])
    return await _actor(store, "alice")


async def test_admin_only_refusal_names_the_caller_and_reason(
    acme: ModelService, store: Store
) -> None:
    """A non-admin creating a role: admin_required, naming who lacks the admin role."""
    alice = await _principals_writer(acme, store)
    with pytest.raises(Forbidden) as refused:
        await acme.create_role(alice, "acme", "agent", "Agent", ["quotes.read"])
    assert refused.value.reason == "admin_required"
    assert str(refused.value) == (
        "only admins can create roles; 'alice' does not hold the admin role"
    )


async def test_require_admin_is_the_rule_a_form_asks(acme: ModelService, store: Store) -> None:
    """The rule a page asks before showing a form is the one the change meets."""
    alice = await _principals_writer(acme, store)
    assert not ModelService.may_manage_roles(alice)
    assert ModelService.may_manage_roles(await _actor(store, "root"))
    with pytest.raises(Forbidden, match="only admins can create roles"):
        ModelService.require_admin(alice, "create roles")


async def test_a_new_principal_gets_no_tenant_beyond_its_creator(
    acme: ModelService, store: Store
) -> None:
    """A non-admin creating a principal cannot give it a tenant it does not reach."""
    alice = await _principals_writer(acme, store)
    with pytest.raises(Forbidden, match="beyond your own scope: acme-test"):
        await acme.create_principal(alice, "acme", "bob", tenants=["acme-prod", "acme-test"])
    assert await store.get_principal("bob") is None
    bob = await acme.create_principal(alice, "acme", "bob", tenants=["acme-prod"])
    assert bob.tenants == ("acme-prod",)


async def test_an_admin_gives_a_new_principal_any_tenant(acme: ModelService, store: Store) -> None:
    """An admin's scope does not cap the principals it creates."""
    root = await _actor(store, "root")
    bob = await acme.create_principal(root, "acme", "bob", tenants=["acme-test"])
    assert bob.tenants == ("acme-test",)


async def test_another_principals_token_is_refused_with_its_reason(
    acme: ModelService, store: Store
) -> None:
    """Creating a token owned by another principal, as a non-admin: not_token_owner."""
    await acme.create_principal(CLI, "acme", "bob", roles=[("full-access", None)])
    bob = await _actor(store, "bob")
    with pytest.raises(Forbidden) as refused:
        await acme.create_token(bob, "alice", "t", ["quotes.read"], [])
    assert refused.value.reason == "not_token_owner"


async def test_visible_tokens_follow_the_token_owner_rule(acme: ModelService, store: Store) -> None:
    """Own tokens for anyone; another's only for an admin of its account; another
    account's principal is not found; an admin without owner sees the account's."""
    await acme.set_principal_roles(CLI, "alice", [("full-access", None)])
    await acme.create_principal(CLI, "acme", "bob", roles=[("full-access", None)])
    own, _ = await acme.create_token(CLI, "alice", "mine", ["quotes.read"], [])
    other, _ = await acme.create_token(CLI, "bob", "his", ["quotes.read"], [])
    alice, root = await _actor(store, "alice"), await _actor(store, "root")
    assert [t.id for t in await acme.visible_tokens(alice)] == [own.id]
    with pytest.raises(Forbidden, match="only 'bob' itself or an admin can see its tokens") as no:
        await acme.visible_tokens(alice, "bob")
    assert no.value.reason == "not_token_owner"
    with pytest.raises(NotFound):
        await acme.visible_tokens(alice, "gadmin")
    assert {t.id for t in await acme.visible_tokens(root)} == {own.id, other.id}
    assert await acme.visible_token(alice, other.id) is None
    assert await acme.visible_token(root, other.id) == other
    assert await acme.token_owners(alice) == ["alice"]
    assert set(await acme.token_owners(root)) == {"root", "alice", "bob"}
