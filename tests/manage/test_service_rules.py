"""The rules for changing the model, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from permgate.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from permgate.core.model import Principal
from permgate.core.token_secrets import hash_secret, token_id_of
from permgate.manage.service import Actor, ModelService
from permgate.store import Store, open_store

CLI = Actor.cli()


async def _actor(store: Store, principal_id: str) -> Actor:
    principal = await store.get_principal(principal_id)
    assert principal is not None
    return Actor.of(principal)


ROLE_ACTIONS: list[tuple[str, Callable[[ModelService, Actor], Awaitable[object]]]] = [
    ("create", lambda s, a: s.create_role(a, "acme", "agent", "Agent", ["quotes.read"])),
    ("update", lambda s, a: s.update_role(a, "acme", "full-access", permissions=["x.y"])),
    ("delete", lambda s, a: s.delete_role(a, "acme", "claims-only")),
    ("assign", lambda s, a: s.set_principal_roles(a, "alice", [("read-only", None)])),
    ("assign-admin", lambda s, a: s.set_principal_roles(a, "alice", [("admin", None)])),
]


@pytest.mark.parametrize(("name", "action"), ROLE_ACTIONS, ids=[n for n, _ in ROLE_ACTIONS])
async def test_only_admins_manage_roles(
    acme: ModelService, store: Store, name: str, action: Callable[..., Awaitable[object]]
) -> None:
    """A principal without the admin role cannot create, update, delete or assign roles."""
    await acme.set_principal_roles(CLI, "alice", [("full-access", None)])
    with pytest.raises(Forbidden, match="only admins"):
        await action(acme, await _actor(store, "alice"))


async def test_admin_principal_manages_roles(acme: ModelService, store: Store) -> None:
    """An admin principal creates and assigns roles in its own account."""
    root = await _actor(store, "root")
    await acme.create_role(root, "acme", "agent", "Agent", ["quotes.read"])
    alice = await acme.set_principal_roles(root, "alice", [("agent", None)])
    assert [a.role for a in alice.roles] == ["agent"]


async def test_admin_of_another_account_sees_nothing(acme: ModelService, store: Store) -> None:
    """An admin of globex cannot touch acme's roles: they do not exist for it."""
    gadmin = await _actor(store, "gadmin")
    with pytest.raises(NotFound, match="account 'acme' not found"):
        await acme.create_role(gadmin, "acme", "agent", "Agent", ["quotes.read"])
    with pytest.raises(NotFound, match="principal 'alice' not found"):
        await acme.set_principal_roles(gadmin, "alice", [("admin", None)])


async def test_role_display_name_cannot_change(acme: ModelService) -> None:
    """Changing a role's display name is refused, naming the current one."""
    await acme.create_role(CLI, "acme", "agent", "Agent", ["quotes.read"])
    with pytest.raises(InvalidInput, match="display_name of role 'agent' cannot change"):
        await acme.update_role(CLI, "acme", "agent", display_name="Sales Agent")


async def test_role_name_cannot_change(acme: ModelService) -> None:
    """Renaming a role is refused."""
    with pytest.raises(InvalidInput, match="role name cannot change"):
        await acme.update_role(CLI, "acme", "full-access", new_name="everything")


async def test_role_permissions_can_change(acme: ModelService, store: Store) -> None:
    """A role's permissions are editable, base roles included."""
    await acme.update_role(CLI, "acme", "claims-only", permissions=["claims.*", "media.update"])
    roles = await store.get_roles("acme")
    assert roles["claims-only"].permissions == ("claims.*", "media.update")


async def test_admin_keeps_everything(acme: ModelService) -> None:
    """The admin role's '*.*' cannot be edited away."""
    with pytest.raises(InvalidInput, match=r"admin role's '\*\.\*'"):
        await acme.update_role(CLI, "acme", "admin", permissions=["quotes.read"])


@pytest.mark.parametrize(
    "grants",
    [["*.write"], ["quotes"], ["quotes.", " quotes.read"], ["*"]],
    ids=["star-action", "no-dot", "empty-action-and-space", "bare-star"],
)
async def test_invalid_grants_are_refused(acme: ModelService, grants: list[str]) -> None:
    """A role with an invalid grant is refused with every bad grant named."""
    with pytest.raises(InvalidInput) as info:
        await acme.create_role(CLI, "acme", "bad", "Bad", grants)
    for grant in grants:
        assert repr(grant) in str(info.value)


async def test_assigned_role_cannot_be_deleted(acme: ModelService) -> None:
    """Deleting an assigned role is a 409 that lists who holds it."""
    await acme.create_role(CLI, "acme", "agent", "Agent", ["quotes.read"])
    await acme.set_principal_roles(CLI, "alice", [("agent", "acme-prod")])
    await acme.set_principal_roles(CLI, "root", [("admin", None), ("agent", None)])
    with pytest.raises(Conflict, match="held by: alice, root"):
        await acme.delete_role(CLI, "acme", "agent")


async def test_unassigned_role_is_deleted(acme: ModelService, store: Store) -> None:
    """A custom role nobody holds can be deleted."""
    await acme.create_role(CLI, "acme", "agent", "Agent", ["quotes.read"])
    await acme.delete_role(CLI, "acme", "agent")
    assert "agent" not in await store.get_roles("acme")


@pytest.mark.parametrize("name", ["admin", "read-only", "full-access", "claims-only"])
async def test_builtin_roles_cannot_be_deleted(acme: ModelService, name: str) -> None:
    """Base and special roles are never deleted, even by the local operator."""
    with pytest.raises(Conflict, match="base or special role"):
        await acme.delete_role(CLI, "acme", name)


async def test_removing_a_role_logs_the_principal_out(acme: ModelService, store: Store) -> None:
    """Taking a role away sets sessions_valid_after; adding one does not."""
    alice = await acme.set_principal_roles(CLI, "alice", [("full-access", None)])
    assert alice.sessions_valid_after is None
    alice = await acme.set_principal_roles(CLI, "alice", [("read-only", None)])
    assert alice.sessions_valid_after is not None
    stored = await store.get_principal("alice")
    assert stored is not None and stored.sessions_valid_after == alice.sessions_valid_after


async def test_enforcement_goes_shadow_to_enforce(acme: ModelService, store: Store) -> None:
    """A shadow tenant can be switched to enforce."""
    await acme.set_enforcement(CLI, "acme-test", "enforce")
    tenant = await store.get_tenant("acme-test")
    assert tenant is not None and tenant.enforcement == "enforce"


async def test_enforcement_never_goes_back_and_is_audited(acme: ModelService, store: Store) -> None:
    """enforce -> shadow is a 409, and the refused attempt is in the audit."""
    with pytest.raises(Conflict, match="one-way"):
        await acme.set_enforcement(CLI, "acme-prod", "shadow")
    latest = (await store.list_audit("acme", limit=1))[0]
    assert latest.action == "tenant.enforcement.refused"
    assert latest.after == {"requested": "shadow"}
    tenant = await store.get_tenant("acme-prod")
    assert tenant is not None and tenant.enforcement == "enforce"


async def test_new_tenant_uses_default_enforcement(store: Store) -> None:
    """Tenants created without a mode take the configured default."""
    service = ModelService(store, default_enforcement="shadow")
    await service.ensure_account(CLI, "acme")
    tenant = await service.create_tenant(CLI, "acme", "acme-prod")
    assert tenant.enforcement == "shadow"


async def test_every_change_is_audited_with_before_and_after(
    acme: ModelService, store: Store
) -> None:
    """A change's audit row names the actor and action with the states around it."""
    root = await _actor(store, "root")
    await acme.create_role(root, "acme", "agent", "Agent", ["quotes.read"])
    await acme.update_role(root, "acme", "agent", permissions=["quotes.*"])
    latest = await store.list_audit("acme", limit=2)
    assert [r.action for r in latest] == ["role.update", "role.create"]
    assert latest[0].actor == "principal:root"
    assert latest[0].before["permissions"] == ["quotes.read"]  # type: ignore[index]
    assert latest[0].after["permissions"] == ["quotes.*"]  # type: ignore[index]
    assert latest[1].before is None


async def test_audit_pages_back_with_before(acme: ModelService, store: Store) -> None:
    """list_audit is newest first and ``before`` continues from an id."""
    page = await store.list_audit("acme", limit=2)
    older = await store.list_audit("acme", limit=2, before=page[-1].id)
    assert page[0].id > page[1].id > older[0].id


CROSS_ACCOUNT: list[tuple[str, Callable[[ModelService], Awaitable[object]]]] = [
    ("role-of-other-account", lambda s: s.set_principal_roles(CLI, "gadmin", [("agent", None)])),
    (
        "tenant-of-other-account-in-assignment",
        lambda s: s.set_principal_roles(CLI, "alice", [("full-access", "globex-prod")]),
    ),
    (
        "tenant-of-other-account-in-scope",
        lambda s: s.set_principal_tenants(CLI, "alice", ["globex-prod"]),
    ),
    (
        "token-tenant-of-other-account",
        lambda s: s.create_token(CLI, "root", "t", ["quotes.read"], ["globex-prod"]),
    ),
    ("unknown-role", lambda s: s.set_principal_roles(CLI, "alice", [("nope", None)])),
    ("unknown-tenant", lambda s: s.set_principal_tenants(CLI, "alice", ["nope"])),
]


@pytest.mark.parametrize(("name", "change"), CROSS_ACCOUNT, ids=[n for n, _ in CROSS_ACCOUNT])
async def test_nothing_crosses_an_account(
    acme: ModelService, name: str, change: Callable[[ModelService], Awaitable[object]]
) -> None:
    """A reference to another account's (or no) role or tenant is refused clearly."""
    await acme.create_role(CLI, "acme", "agent", "Agent", ["quotes.read"])
    with pytest.raises(InvalidInput, match=r"does not exist in account|of account"):
        await change(acme)


async def test_principal_ids_are_unique_across_accounts(acme: ModelService) -> None:
    """A principal id taken in one account cannot be created in another."""
    with pytest.raises(Conflict, match="already taken"):
        await acme.create_principal(CLI, "globex", "alice")


async def _owner(acme: ModelService, roles: list[tuple[str, str | None]], scope: list[str]) -> None:
    await acme.create_role(CLI, "acme", "agent", "Agent", ["quotes.write", "policy.*"])
    await acme.set_principal_roles(CLI, "alice", roles)
    await acme.set_principal_tenants(CLI, "alice", scope)


WITHIN = [
    ("exact", [("agent", None)], ["acme-prod"], ["quotes.write"], ["acme-prod"]),
    ("group-wildcard", [("agent", None)], ["acme-prod"], ["policy.*", "policy.issue"], []),
    ("tenant-role-counts", [("agent", "acme-prod")], ["acme-prod"], ["quotes.write"], []),
    ("read-rule", [("read-only", None)], ["any"], ["quotes.read", "invoice.fetch"], ["any"]),
    ("claims-only-reads", [("claims-only", None)], [], ["quotes.list", "claims.*"], []),
    ("full-access", [("full-access", None)], ["type:test"], ["*.*"], ["type:test", "acme-test"]),
    ("admin-any-tenant", [("admin", None)], [], ["*.*"], ["any"]),
]


@pytest.mark.parametrize(
    ("name", "roles", "scope", "grants", "tenants"), WITHIN, ids=[w[0] for w in WITHIN]
)
async def test_token_within_owner_is_created(
    acme: ModelService,
    store: Store,
    name: str,
    roles: list[tuple[str, str | None]],
    scope: list[str],
    grants: list[str],
    tenants: list[str],
) -> None:
    """A token whose grants and tenants the owner holds is created."""
    await _owner(acme, roles, scope)
    token, secret = await acme.create_token(CLI, "alice", "ci", grants, tenants)
    assert token.permissions == tuple(grants) and token.tenants == tuple(tenants)
    stored = await store.get_token(token.id)
    assert stored is not None and stored.secret_hash == hash_secret(secret)


EXCEEDING = [
    ("ungranted", [("agent", None)], ["acme-prod"], ["claims.read"], [], "claims.read"),
    ("group-needs-group", [("agent", None)], ["acme-prod"], ["quotes.*"], [], r"quotes\.\*"),
    ("all-needs-all", [("agent", None)], ["acme-prod"], ["*.*"], [], r"\*\.\*"),
    ("read-rule-no-write", [("read-only", None)], ["any"], ["quotes.write"], [], "quotes.write"),
    (
        "read-rule-not-group",
        [("read-only", None)],
        ["any"],
        ["quotes.*"],
        [],
        r"quotes\.\*",
    ),
    ("tenant", [("agent", None)], ["acme-prod"], ["quotes.write"], ["acme-test"], "acme-test"),
    ("any", [("agent", None)], ["type:test"], ["quotes.write"], ["any"], "outside.*any"),
    (
        "type-test",
        [("agent", None)],
        ["acme-test"],
        ["quotes.write"],
        ["type:test"],
        "type:test",
    ),
    ("test-scope-not-prod", [("agent", None)], ["type:test"], ["policy.*"], ["acme-prod"], "prod"),
]


@pytest.mark.parametrize(
    ("name", "roles", "scope", "grants", "tenants", "named"),
    EXCEEDING,
    ids=[e[0] for e in EXCEEDING],
)
async def test_token_exceeding_owner_is_refused(
    acme: ModelService,
    store: Store,
    name: str,
    roles: list[tuple[str, str | None]],
    scope: list[str],
    grants: list[str],
    tenants: list[str],
    named: str,
) -> None:
    """A token wider than its owner is a 422 naming the excess; nothing is stored."""
    await _owner(acme, roles, scope)
    with pytest.raises(InvalidInput, match=f"exceed its owner 'alice'.*{named}"):
        await acme.create_token(CLI, "alice", "ci", grants, tenants)
    assert await store.list_tokens(owner="alice") == []


async def test_token_excess_lists_everything(acme: ModelService) -> None:
    """Every exceeding grant and tenant is named in one error."""
    await _owner(acme, [("agent", None)], ["acme-prod"])
    with pytest.raises(InvalidInput) as info:
        await acme.create_token(CLI, "alice", "ci", ["a.b", "c.d"], ["acme-test", "any"])
    for name in ("a.b", "c.d", "acme-test", "any"):
        assert name in str(info.value)


async def test_token_secret_carries_its_id(acme: ModelService, store: Store) -> None:
    """The secret is prefix + token id + random part; the store keeps only its hash."""
    token, secret = await acme.create_token(CLI, "root", "ci", ["*.*"], ["any"], expires_in=60)
    assert token_id_of("pgt_", secret) == token.id
    assert token.expires_at is not None and token.created_at is not None
    assert (token.expires_at - token.created_at).total_seconds() == 60


TOKEN_MANAGERS = [
    ("self", "alice", True),
    ("admin-same-account", "root", True),
    ("other-principal", "bob", False),
]


@pytest.mark.parametrize(
    ("name", "who", "allowed"), TOKEN_MANAGERS, ids=[t[0] for t in TOKEN_MANAGERS]
)
async def test_who_manages_tokens(
    acme: ModelService, store: Store, name: str, who: str, allowed: bool
) -> None:
    """A principal manages its own tokens, an admin anyone's in its account."""
    await acme.create_principal(CLI, "acme", "bob", roles=[("full-access", None)])
    await _owner(acme, [("agent", None)], ["acme-prod"])
    actor = await _actor(store, who)
    if not allowed:
        with pytest.raises(Forbidden, match="itself or an admin"):
            await acme.create_token(actor, "alice", "t", ["quotes.write"], [])
        return
    token, _ = await acme.create_token(actor, "alice", "t", ["quotes.write"], [])
    revoked = await acme.revoke_token(actor, token.id)
    assert revoked.revoked_at is not None


async def test_revoke_unknown_token_is_not_found(acme: ModelService) -> None:
    """Revoking a token that does not exist is a 404."""
    with pytest.raises(NotFound, match="token 'nope' not found"):
        await acme.revoke_token(CLI, "nope")


async def test_disabled_owner_gets_no_token(acme: ModelService) -> None:
    """A disabled principal cannot be given a new token."""
    await acme.update_principal(CLI, "root", disabled=True)
    with pytest.raises(InvalidInput, match="disabled"):
        await acme.create_token(CLI, "root", "t", ["*.*"], [])


async def test_delete_role_racing_assignment_never_leaves_a_dangling_assignment(
    store_dsn: str, acme: ModelService
) -> None:
    """Two writers racing (delete a role / assign it) end consistent on every round."""
    other = await open_store(store_dsn)
    try:
        deleter = ModelService(other)
        for round_ in range(8):
            role = f"race{round_}"
            await acme.create_role(CLI, "acme", role, "Race", ["quotes.read"])
            results = await asyncio.gather(
                deleter.delete_role(CLI, "acme", role),
                acme.set_principal_roles(CLI, "alice", [(role, None)]),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    assert isinstance(result, (Conflict, InvalidInput)), result
            roles = await acme.store.get_roles("acme")
            alice = await acme.store.get_principal("alice")
            assert isinstance(alice, Principal)
            held = {a.role for a in alice.roles}
            assert role in roles or role not in held
            await acme.set_principal_roles(CLI, "alice", [])
    finally:
        await other.close()


ESCALATIONS: list[tuple[str, Callable[[ModelService, Actor], Awaitable[object]], str]] = [
    ("widen own scope", lambda s, a: s.set_principal_tenants(a, "alice", ["any"]), "its own"),
    ("disable an admin", lambda s, a: s.update_principal(a, "root", disabled=True), "an admin"),
    ("rescope an admin", lambda s, a: s.set_principal_tenants(a, "root", []), "an admin"),
    (
        "grant a tenant beyond own scope",
        lambda s, a: s.set_principal_tenants(a, "bob", ["acme-test"]),
        "beyond your own scope",
    ),
]


@pytest.mark.parametrize(
    ("name", "action", "message"), ESCALATIONS, ids=[n for n, _, _ in ESCALATIONS]
)
async def test_principal_management_cannot_escalate(
    acme: ModelService,
    store: Store,
    name: str,
    action: Callable[..., Awaitable[object]],
    message: str,
) -> None:
    """A non-admin with principals.write cannot widen itself, touch admins, or hand
    out tenants it does not reach itself."""
    await acme.create_principal(CLI, "acme", "bob", tenants=["acme-prod"])
    with pytest.raises(Forbidden, match=message):
        await action(acme, await _actor(store, "alice"))


async def test_non_admin_may_rescope_within_its_own_scope(acme: ModelService, store: Store) -> None:
    """Handing out a tenant the actor itself reaches is allowed."""
    await acme.create_principal(CLI, "acme", "bob", tenants=[])
    bob = await acme.set_principal_tenants(await _actor(store, "alice"), "bob", ["acme-prod"])
    assert bob.tenants == ("acme-prod",)


async def test_tenant_ids_are_unique_regardless_of_case_across_accounts(
    acme: ModelService,
) -> None:
    """'ACME-PROD' in globex would let an upstream that folds case serve acme's data."""
    with pytest.raises(Conflict, match="regardless of case"):
        await acme.create_tenant(CLI, "globex", "ACME-PROD")


async def test_only_admins_choose_shadow_for_a_new_tenant(acme: ModelService, store: Store) -> None:
    """Shadow forwards every deny, so a non-admin with tenants.write cannot pick it."""
    await acme.set_principal_roles(CLI, "alice", [("full-access", None)])
    alice = await _actor(store, "alice")
    with pytest.raises(Forbidden, match="shadow"):
        await acme.create_tenant(alice, "acme", "acme-sandbox", enforcement="shadow")
    created = await acme.create_tenant(alice, "acme", "acme-sandbox")
    assert created.enforcement == "enforce"
