"""Principal ids unique regardless of case (service, schema, apply, CLI), SPIFFE ids,
and token lineage (lifetime cap, revocation of descendants) on both backends."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from permgate.cli import main
from permgate.core.errors import Conflict, InvalidInput, StoreUnavailable
from permgate.core.model import Principal, Tenant
from permgate.manage.policy_file import PolicyError, apply_plan, parse_policy, plan_policy
from permgate.manage.service import Actor, ModelService
from permgate.store import Store, open_store

CLI = Actor.cli()
SPIFFE = "spiffe://acme/svc-billing"


async def _as_token(store: Store, principal_id: str, token_id: str) -> Actor:
    principal = await store.get_principal(principal_id)
    token = await store.get_token(token_id)
    assert principal is not None and token is not None
    return Actor.of(principal, token)


# -- principal ids -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "principal_id"),
    [("acme", "ALICE"), ("acme", "Root"), ("globex", "Alice"), ("acme", "GAdmin")],
    ids=["same-account", "same-account-admin", "across-accounts", "across-accounts-reverse"],
)
async def test_case_only_principal_clash_is_a_conflict(
    acme: ModelService, store: Store, account: str, principal_id: str
) -> None:
    """An id equal to an existing one but for case is refused in any account."""
    with pytest.raises(Conflict, match="regardless of case"):
        await acme.create_principal(CLI, account, principal_id)
    assert await store.get_principal(principal_id) is None


async def test_schema_refuses_a_case_clash_the_service_did_not_see(
    acme: ModelService, store: Store
) -> None:
    """A writer bypassing the service (an older permgate) still cannot store 'ALICE'."""
    with pytest.raises(Conflict):
        async with store.write() as tx:
            await tx.insert_principal(Principal("ALICE", "globex"))
    assert await store.get_principal("ALICE") is None


async def test_schema_refuses_a_case_clash_of_tenants(acme: ModelService, store: Store) -> None:
    """The same holds for tenant ids."""
    with pytest.raises(Conflict):
        async with store.write() as tx:
            await tx.insert_tenant(Tenant("ACME-PROD", "globex"), 0.0)


async def test_spiffe_id_is_a_principal_id(acme: ModelService, store: Store) -> None:
    """A SPIFFE id (with '/') is created and read back as it was given."""
    await acme.create_principal(CLI, "acme", SPIFFE, kind="client", tenants=["acme-prod"])
    principal = await store.get_principal(SPIFFE)
    assert principal is not None and principal.kind == "client"


CLASHES = [
    pytest.param(
        (Principal("alice", "acme"), Principal("Alice", "globex")),
        "principal ids that differ only in case",
        id="principals",
    ),
    pytest.param(
        (Tenant("acme-prod", "acme"), Tenant("ACME-prod", "globex")),
        "tenant ids that differ only in case",
        id="tenants",
    ),
]


@pytest.mark.parametrize(("pair", "what"), CLASHES)
async def test_a_store_holding_case_clashes_is_not_migrated(
    store_dsn: str, pair: tuple[Principal | Tenant, ...], what: str
) -> None:
    """Upgrading a store whose ids differ only in case stops with a message naming
    them and leaves the store as it was (still usable by the older schema)."""
    old = await open_store(store_dsn, schema_target=2)
    service = ModelService(old)
    await service.ensure_account(CLI, "acme")
    await service.ensure_account(CLI, "globex")
    async with old.write() as tx:  # as permgate before this rule could
        for item in pair:
            if isinstance(item, Principal):
                await tx.insert_principal(item)
            else:
                await tx.insert_tenant(item, 0.0)
    await old.close()
    with pytest.raises(StoreUnavailable) as info:
        await open_store(store_dsn)
    message = str(info.value)
    assert f"schema to version 3: it holds {what}" in message
    for item in pair:
        assert f"{item.id!r} (account {item.account!r})" in message
    assert "left unchanged" in message
    again = await open_store(store_dsn, schema_target=2)
    try:
        async with again.write() as tx:
            rows = await tx._conn.fetch("SELECT version FROM schema_version")
        assert rows[0][0] == 2
    finally:
        await again.close()


async def test_migration_keeps_tokens_without_a_parent(store_dsn: str) -> None:
    """Tokens made before lineage existed are migrated with parent_token_id None."""
    old = await open_store(store_dsn, schema_target=2)
    service = ModelService(old)
    await service.ensure_account(CLI, "acme")
    await service.create_principal(CLI, "acme", "root", roles=[("admin", None)])
    async with old.write() as tx:
        rows = await tx._conn.fetch("SELECT count(*) FROM tokens")
    assert rows[0][0] == 0
    # Insert a v2 token row by hand: the v2 table has no parent column.
    async with old.write() as tx:
        await tx._conn.execute(
            "INSERT INTO tokens (id, owner, account, name, permissions, tenants, secret_hash, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            "t" * 16,
            "root",
            "acme",
            "old",
            '["*.*"]',
            "[]",
            b"x",
            0.0,
        )
    await old.close()
    current = await open_store(store_dsn)
    try:
        token = await current.get_token("t" * 16)
        assert token is not None and token.parent_token_id is None
    finally:
        await current.close()


# -- policy files and commands ---------------------------------------------------------

POLICY = textwrap.dedent(
    """\
    accounts:
      - id: globex
        principals:
          - id: Alice
    """
)


async def test_apply_refuses_a_case_clash_with_the_store_naming_the_line(
    acme: ModelService, store: Store
) -> None:
    """'Alice' in globex while acme holds 'alice': a plan error on the principal's line."""
    policy = parse_policy(POLICY, "policy.yaml")
    with pytest.raises(PolicyError) as info:
        await plan_policy(store, policy)
    assert info.value.errors == [
        "policy.yaml:4: principal id 'Alice' differs only in case from 'alice' of account "
        "'acme': ids are unique regardless of case"
    ]
    assert await store.get_principal("Alice") is None


def test_a_case_clash_inside_the_file_is_a_parse_error() -> None:
    """Two principals of one file differing only in case, even in two accounts."""
    text = textwrap.dedent(
        """\
        accounts:
          - id: acme
            principals: [{id: alice}]
          - id: globex
            principals:
              - id: ALICE
        """
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml")
    assert info.value.errors == [
        "policy.yaml:6: duplicate principal id 'ALICE' (differs only in case from 'alice') "
        "(first on line 3; ids are unique regardless of case)"
    ]


async def test_apply_creates_a_spiffe_principal(service: ModelService, store: Store) -> None:
    """A policy file may name a SPIFFE id."""
    text = f"accounts:\n  - id: acme\n    principals:\n      - {{id: '{SPIFFE}', kind: client}}\n"
    actions = await plan_policy(store, parse_policy(text, "policy.yaml"))
    assert await apply_plan(service, CLI, actions) == ["+ account acme", f"+ principal {SPIFFE}"]
    assert await store.get_principal(SPIFFE) is not None


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _common(tmp_path: Path, dsn: str) -> list[str]:
    config = tmp_path / "permgate.yaml"
    config.write_text("audit: {sink: stdout}\n")
    return ["--config", str(config), "--store", dsn]


def test_cli_apply_and_bootstrap_refuse_case_clashes(
    tmp_path: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """permgate apply exits 1 naming the line, bootstrap exits 2 naming both ids; no
    traceback, nothing created."""
    common = _common(tmp_path, store_dsn)
    code, _, err = _run(capsys, "bootstrap", "--account", "acme", "--principal", "root", *common)
    assert code == 0, err
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("Alice", "ROOT"))
    code, out, err = _run(capsys, "apply", str(policy), *common)
    assert code == 1 and out == ""
    assert f"{policy}:4: principal id 'ROOT' differs only in case from 'root'" in err
    assert "Traceback" not in err
    code, out, err = _run(capsys, "bootstrap", "--account", "acme", "--principal", "Root", *common)
    assert code == 2 and out == ""
    assert "principal id 'Root' is already taken (as 'root'" in err
    assert "Traceback" not in err


# -- token lineage ------------------------------------------------------------------


async def _root_minter(acme: ModelService, expires_in: float | None = 3600) -> str:
    token, _ = await acme.create_token(
        CLI, "root", "minter", ["authTokens.write", "quotes.read"], ["any"], expires_in
    )
    return token.id


async def test_service_caps_a_token_made_with_a_token(acme: ModelService, store: Store) -> None:
    """The rule is the service's: any door passing the calling token gets it."""
    actor = await _as_token(store, "root", await _root_minter(acme))
    with pytest.raises(InvalidInput, match="no expiry, later than its own"):
        await acme.create_token(actor, "root", "forever", ["quotes.read"], [])
    with pytest.raises(InvalidInput, match=r"give expires_in of at most 3[0-9]{3} seconds"):
        await acme.create_token(actor, "root", "long", ["quotes.read"], [], 7200)
    token, _ = await acme.create_token(actor, "root", "short", ["quotes.read"], [], 60)
    assert token.parent_token_id == actor.token.id  # type: ignore[union-attr]


async def test_a_token_revoked_meanwhile_cannot_mint(acme: ModelService, store: Store) -> None:
    """The calling token is re-read in the write: revoked since authentication, refused."""
    actor = await _as_token(store, "root", await _root_minter(acme))
    await acme.revoke_token(CLI, actor.token.id)  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="revoked or expired meanwhile"):
        await acme.create_token(actor, "root", "late", ["quotes.read"], [], 60)


async def test_revocation_reaches_every_descendant(acme: ModelService, store: Store) -> None:
    """Three generations: revoking the first revokes the other two, one change each."""
    first = await _root_minter(acme)
    actor = await _as_token(store, "root", first)
    second, _ = await acme.create_token(
        actor, "root", "second", ["authTokens.write", "quotes.read"], ["acme-prod"], 600
    )
    third, _ = await acme.create_token(
        await _as_token(store, "root", second.id), "root", "third", ["quotes.read"], [], 60
    )
    version = await store.version()
    await acme.revoke_token(CLI, first)
    for token_id in (first, second.id, third.id):
        token = await store.get_token(token_id)
        assert token is not None and token.revoked_at is not None, token_id
    keys = {c.key for c in await store.changes_since(version)}
    assert {first, second.id, third.id} <= keys


async def test_deleting_a_principal_revokes_what_its_tokens_minted_for_others(
    acme: ModelService, store: Store
) -> None:
    """root's token minted a token for alice; deleting root revokes alice's token."""
    minter, _ = await acme.create_token(CLI, "root", "m", ["*.*"], ["any"], 3600)
    await acme.set_principal_roles(CLI, "alice", [("full-access", None)])
    minted, _ = await acme.create_token(
        await _as_token(store, "root", minter.id), "alice", "for-alice", ["quotes.read"], [], 60
    )
    await acme.delete_principal(CLI, "root")
    token = await store.get_token(minted.id)
    assert token is not None and token.revoked_at is not None
    audit = await store.list_audit("acme", limit=5)
    assert ("token.revoke.cascade", minted.id) in {(r.action, r.target) for r in audit}


@pytest.mark.parametrize(
    "name", ["line\nbreak", "nul\u0000byte", "escape\u001b[31m"], ids=["newline", "nul", "escape"]
)
async def test_names_with_control_characters_are_refused(acme: ModelService, name: str) -> None:
    """Token names and display names reach logs and text columns: no control characters,
    whichever door (CLI, policy file, admin API) they come through."""
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        await acme.create_token(CLI, "root", name, ["quotes.read"], [])
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        await acme.create_role(CLI, "acme", "r", name, ["quotes.read"])
