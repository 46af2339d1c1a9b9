"""policy.yaml: every error with its line, nothing half-applied, idempotent apply."""

from __future__ import annotations

import textwrap

import pytest

from permgate.manage.policy_file import PolicyError, apply_plan, parse_policy, plan_policy
from permgate.manage.service import Actor, ModelService
from permgate.store import Store

CLI = Actor.cli()

POLICY = textwrap.dedent(
    """\
    accounts:
      - id: acme
        tenants:
          - {id: acme-prod, type: PRODUCTION}
          - {id: acme-test, type: TEST, enforcement: shadow}
        roles:
          - name: sales-agent
            display_name: Sales Agent
            permissions: [policy.create, policy.fetch, quote.*]
        principals:
          - id: alice
            kind: user
            roles: [sales-agent]
            tenant_roles: {acme-test: [claims-only]}
            tenants: [acme-prod, type:test]
          - id: root
            roles: [admin]
    """
)


async def _apply(service: ModelService, text: str, *, prune: bool = False) -> list[str]:
    policy = parse_policy(text, "policy.yaml")
    actions = await plan_policy(service.store, policy, prune=prune)
    return await apply_plan(service, CLI, actions)


def _errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml")
    return info.value.errors


async def test_apply_creates_everything_and_prints_it(service: ModelService, store: Store) -> None:
    """A first apply creates the account, tenants, roles and principals, line by line."""
    lines = await _apply(service, POLICY)
    assert lines == [
        "+ account acme",
        "+ tenant acme-prod (PRODUCTION, enforce)",
        "+ tenant acme-test (TEST, shadow)",
        "+ role sales-agent",
        "+ principal alice",
        "+ principal root",
    ]
    alice = await store.get_principal("alice")
    assert alice is not None and alice.tenants == ("acme-prod", "type:test")
    assert {(a.role, a.tenant) for a in alice.roles} == {
        ("sales-agent", None),
        ("claims-only", "acme-test"),
    }


async def test_second_apply_changes_nothing(service: ModelService, store: Store) -> None:
    """Applying the same file twice: the second plan is empty and no version is made."""
    await _apply(service, POLICY)
    version = await store.version()
    assert await _apply(service, POLICY) == []
    assert await store.version() == version


async def test_apply_reports_modifications(service: ModelService) -> None:
    """Changed permissions, roles, scope and enforcement are each one '~' line."""
    await _apply(service, POLICY)
    changed = (
        POLICY.replace("quote.*]", "quote.*, document.write]")
        .replace("enforcement: shadow", "enforcement: enforce")
        .replace("tenants: [acme-prod, type:test]", "tenants: [any]")
        .replace("roles: [admin]", "roles: [admin, read-only]")
    )
    assert await _apply(service, changed) == [
        "~ tenant acme-test enforcement shadow -> enforce",
        "~ role sales-agent permissions",
        "~ principal alice tenants",
        "~ principal root roles",
    ]


async def test_prune_deletes_unnamed_roles_and_principals(
    service: ModelService, store: Store
) -> None:
    """With --prune, roles and principals the file no longer names are deleted."""
    await _apply(service, POLICY)
    await service.create_role(CLI, "acme", "old", "Old", ["x.y"])
    await service.create_principal(CLI, "acme", "bob", roles=[("old", None)])
    assert await _apply(service, POLICY) == []
    assert await _apply(service, POLICY, prune=True) == ["- principal bob", "- role old"]
    assert "old" not in await store.get_roles("acme")
    assert await store.get_principal("bob") is None


async def test_prune_of_a_still_assigned_role_fails_whole(
    service: ModelService, store: Store
) -> None:
    """--prune refuses to delete a role the file still assigns, naming role and holders."""
    await _apply(service, POLICY)
    await service.create_role(CLI, "acme", "old", "Old", ["x.y"])
    text = POLICY.replace("roles: [admin]", "roles: [admin, old]")
    version = await store.version()
    expected = r"policy\.yaml:17: --prune would delete role 'old'.*root"
    with pytest.raises(PolicyError, match=expected):
        await _apply(service, text, prune=True)
    assert await store.version() == version


SHAPE_ERRORS = [
    (
        "bad-permission",
        POLICY.replace("quote.*]", "'*.write']"),
        "policy.yaml:9: grant '*.write'",
    ),
    (
        "unknown-key",
        POLICY.replace("kind: user", "knd: user"),
        "policy.yaml:12: accounts[0].principals[0].knd: unknown key (allowed: id, kind,",
    ),
    (
        "duplicate-tenant",
        POLICY.replace("acme-test, type: TEST", "acme-prod, type: TEST"),
        "policy.yaml:5: duplicate tenant id 'acme-prod' (first on line 4)",
    ),
    (
        "duplicate-principal",
        POLICY.replace("id: root", "id: alice"),
        "policy.yaml:16: duplicate principal id 'alice'",
    ),
    ("bad-type", POLICY.replace("type: TEST", "type: STAGING"), "policy.yaml:5: tenant type"),
    ("bad-kind", POLICY.replace("kind: user", "kind: robot"), "policy.yaml:12: principal kind"),
    ("truncated", POLICY[: POLICY.index("tenant_roles") + 20], "YAML syntax error"),
    ("empty", "", "policy.yaml:1: the policy file is empty"),
    ("no-accounts", "tenants: []\n", "policy.yaml:1: tenants: unknown key (allowed: accounts)"),
]


@pytest.mark.parametrize(
    ("name", "text", "expected"), SHAPE_ERRORS, ids=[e[0] for e in SHAPE_ERRORS]
)
def test_shape_errors_name_the_line(name: str, text: str, expected: str) -> None:
    """Every shape error is reported as FILE:LINE: message."""
    errors = _errors(text)
    assert any(expected in error for error in errors), errors


def test_every_error_is_reported_at_once() -> None:
    """Several problems in one file are all reported, in line order."""
    text = POLICY.replace("quote.*]", "quote.]").replace("kind: user", "kind: robot")
    errors = _errors(text)
    assert [e.split(":")[1] for e in errors] == ["9", "12"]


REFERENCE_ERRORS = [
    ("unknown-role", POLICY.replace("roles: [admin]", "roles: [boss]"), ":17: unknown role 'boss'"),
    (
        "unknown-tenant",
        POLICY.replace("tenants: [acme-prod, type:test]", "tenants: [acme-dev]"),
        ":15: unknown tenant 'acme-dev'",
    ),
]


async def test_unknown_references_name_the_line(service: ModelService, store: Store) -> None:
    """Unknown roles and tenants are errors with their lines; nothing is written."""
    for _name, text, expected in REFERENCE_ERRORS:
        with pytest.raises(PolicyError) as info:
            await _apply(service, text)
        assert any(expected in e for e in info.value.errors), info.value.errors
    assert await store.list_accounts() == []


async def test_cross_account_references_are_refused(service: ModelService, store: Store) -> None:
    """A principal of one account cannot use another account's tenant or role."""
    text = POLICY.replace("tenants: [acme-prod, type:test]", "tenants: [globex-prod]").replace(
        "roles: [admin]", "roles: [globex-role]"
    ) + (
        "  - id: globex\n"
        "    tenants: [{id: globex-prod}]\n"
        "    roles: [{name: globex-role, permissions: [a.b]}]\n"
    )
    with pytest.raises(PolicyError) as info:
        await _apply(service, text)
    joined = "\n".join(info.value.errors)
    assert "policy.yaml:15: tenant 'globex-prod' belongs to account 'globex'" in joined
    assert "policy.yaml:17: role 'globex-role' is defined in account 'globex'" in joined
    assert await store.list_accounts() == []


async def test_state_rules_are_checked_before_writing(service: ModelService, store: Store) -> None:
    """One-way enforcement and immutable display names are plan errors with lines."""
    await _apply(service, POLICY.replace("enforcement: shadow", "enforcement: enforce"))
    text = POLICY.replace("Sales Agent", "Seller")
    with pytest.raises(PolicyError) as info:
        await _apply(service, text)
    joined = "\n".join(info.value.errors)
    assert "policy.yaml:5: tenant 'acme-test' is in enforce mode" in joined
    assert "policy.yaml:7: display_name of role 'sales-agent' cannot change" in joined


async def test_tenant_of_another_account_in_store_is_refused(
    service: ModelService, store: Store
) -> None:
    """A tenant id the store holds for another account cannot be declared again."""
    await service.ensure_account(CLI, "globex")
    await service.create_tenant(CLI, "globex", "acme-prod")
    with pytest.raises(PolicyError, match="acme-prod' already belongs to another account"):
        await _apply(service, POLICY)
