"""The console's least-privilege advice (user and token pages), the first-password rule
for token sessions, and the audit of token sign-ins, against the real admin application
on a real store."""

from __future__ import annotations

import html
import time
from urllib.parse import urlencode

import pytest

from console_world import OPS, PASSWORD, World
from permgate.manage.service import Actor
from permgate.store.sql import UsageRow

CLI = Actor.cli()
DAY = 86_400.0


async def _used(
    world: World, principal: str, token: str | None, permission: str, days_ago: float = 1
) -> None:
    """Record that ``principal`` (through ``token``, a seeded token's name) used
    ``permission`` on acme-prod ``days_ago`` days ago, three times."""
    at = time.time() - days_ago * DAY
    token_id = None if token is None else world.token_ids[token]
    row = UsageRow(principal, token_id, "acme-prod", permission, "acme", at, at, 3)
    await world.runtime.store.add_usage([row])


def _section(page_text: str) -> str:
    """The advice section of a page."""
    start = page_text.index('data-testid="advice"')
    return html.unescape(page_text[start : page_text.index("</section>", start)])


def _items(section: str, testid: str) -> list[str]:
    """The list items of the ``testid`` list inside the advice section."""
    start = section.index(f'data-testid="{testid}"')
    body = section[start : section.index("</ul>", start)]
    return [
        part.split("</li>")[0].replace("<code>", "").replace("</code>", "")
        for part in body.split("<li>")[1:]
    ]


# -- advice on the user page ---------------------------------------------------------


async def test_user_page_shows_unused_and_suggested_grants(world: World) -> None:
    """alice used only tenants.read on acme-prod: the page lists her seven other ops
    grants as unused and suggests exactly tenants.read on acme-prod."""
    await _used(world, "alice", None, "tenants.read")
    await world.sign_in("root")
    page = await world.get("/console/users/view?id=alice")
    assert page.status == 200
    section = _section(page.text)
    assert _items(section, "unused-grants") == sorted(g for g in OPS if g != "tenants.read")
    assert _items(section, "suggested-grants") == ["tenants.read"]
    assert _items(section, "suggested-tenants") == ["acme-prod"]
    assert "Used in the last 90 days" in section


async def test_user_page_window_follows_the_days_asked(world: World) -> None:
    """A use older than the window asked for is not counted: with days=7 a use 30
    days ago leaves every grant unused and suggests nothing."""
    await _used(world, "carol", None, "quotes.read", days_ago=30)
    await world.sign_in("root")
    section = _section((await world.get("/console/users/view?id=carol&days=7")).text)
    assert "Used in the last 7 days" in section
    assert _items(section, "unused-grants") == ["quotes.*"]
    assert _items(section, "suggested-grants") == ["none"]
    assert "No use recorded in the window." in section


@pytest.mark.parametrize(
    "days", ["0", "abc", "3651", "-5"], ids=["zero", "word", "too-many", "neg"]
)
async def test_user_page_refuses_a_bad_window(world: World, days: str) -> None:
    """A window that is not a whole number of days from 1 to 3650 is refused in one line."""
    await world.sign_in("root")
    page = await world.get("/console/users/view?" + urlencode({"id": "alice", "days": days}))
    assert page.status == 422
    assert "a whole number from 1 to 3650" in html.unescape(page.text)


async def test_advice_needs_principals_read(world: World) -> None:
    """carol (no principals.read) opens her own page: the advice is withheld and the page
    says which permission it needs, as the admin API's advice route would refuse."""
    await _used(world, "carol", None, "quotes.read")
    await world.sign_in("carol")
    page = await world.get("/console/users/view?id=carol")
    assert page.status == 200
    section = _section(page.text)
    assert "needs principals.read" in section
    assert 'data-testid="unused-grants"' not in section


# -- advice on the token page --------------------------------------------------------


async def test_token_page_suggests_a_narrower_token(world: World) -> None:
    """alice's token used only tenants.read on acme-prod: its page lists the unused
    grants and a narrower token, with a link to the create form filled in with it."""
    await _used(world, "alice", "alice", "tenants.read")
    await world.sign_in("root")
    page = await world.get(f"/console/tokens/view?id={world.token_ids['alice']}")
    assert page.status == 200
    section = _section(page.text)
    assert _items(section, "unused-grants") == sorted(g for g in OPS if g != "tenants.read")
    assert _items(section, "suggested-grants") == ["tenants.read"]
    assert "Grants <code>tenants.read</code> on acme-prod." in section
    query = urlencode(
        {
            "owner": "alice",
            "name": "alice (narrowed)",
            "permissions": "tenants.read",
            "tenants": "acme-prod",
        }
    )
    assert f'href="/console/tokens?{query}"' in section
    form = await world.get(f"/console/tokens?{query}")
    assert 'value="alice" selected' in form.text
    assert 'value="alice (narrowed)"' in form.text
    assert 'value="acme-prod" checked' in form.text


async def test_token_list_links_each_token_page(world: World) -> None:
    """Each token's name on the list opens its page."""
    await world.sign_in("root")
    page = await world.get("/console/tokens")
    assert f'href="/console/tokens/view?id={world.token_ids["carol"]}">carol</a>' in page.text


async def test_token_page_of_another_owner_is_not_found_for_a_non_admin(world: World) -> None:
    """As the token list: a non-admin sees only its own tokens (others' answer 404)."""
    await world.sign_in("alice")
    assert (await world.get(f"/console/tokens/view?id={world.token_ids['alice']}")).status == 200
    page = await world.get(f"/console/tokens/view?id={world.token_ids['carol']}")
    assert page.status == 404


async def test_token_session_without_principals_read_sees_no_advice(world: World) -> None:
    """Signed in with a token granting authTokens.read but not principals.read, alice
    sees her token's page without its advice: the token caps the console as the API."""
    _, secret = await world.runtime.service.create_token(
        CLI, "alice", "lister", ["authTokens.read"], ["acme-prod"]
    )
    await world.runtime.deliver_changes()
    await world.sign_in_token(secret)
    page = await world.get(f"/console/tokens/view?id={world.token_ids['alice']}")
    assert page.status == 200
    assert "needs principals.read" in _section(page.text)


# -- a token session and its owner's first password ------------------------------------


async def _erin(world: World, grants: list[str]) -> str:
    """A new principal erin (ops role, no password) and a token of hers; its secret."""
    service = world.runtime.service
    await service.create_principal(
        CLI, "acme", "erin", tenants=["acme-prod"], roles=[("ops", None)]
    )
    _, secret = await service.create_token(CLI, "erin", "erin", grants, ["acme-prod"])
    await world.runtime.deliver_changes()
    return secret


async def test_token_session_without_principals_write_cannot_set_a_first_password(
    world: World,
) -> None:
    """erin signed in with a token that does not grant principals.write cannot give
    herself a first password (it would sign in with all her roles' power)."""
    await world.sign_in_token(await _erin(world, ["principals.read"]))
    csrf = await world.csrf()
    page = await world.post(
        "/console/users/password", {"csrf": csrf, "id": "erin", "password": "erin-first-one-77"}
    )
    assert page.status == 403
    text = html.unescape(page.text)
    assert "setting a first password with an auth token requires principals.write" in text
    assert not await world.runtime.service.has_password("erin")


async def test_token_session_with_principals_write_sets_a_first_password(world: World) -> None:
    """With principals.write in the token, erin's first password is set and signs her in."""
    await world.sign_in_token(await _erin(world, ["principals.read", "principals.write"]))
    csrf = await world.csrf()
    await world.post(
        "/console/users/password", {"csrf": csrf, "id": "erin", "password": "erin-first-one-77"}
    )
    assert await world.runtime.service.has_password("erin")
    world.forget_cookies()
    assert (await world.sign_in("erin", "erin-first-one-77")).path == "/console/"


# -- token sign-ins are audited --------------------------------------------------------


async def _logins(world: World, account: str | None) -> list[tuple[str, object]]:
    records = await world.runtime.store.list_audit(account, limit=50)
    return [(r.target, r.after) for r in records if r.action == "auth.login"]


async def test_refused_token_sign_in_is_audited_without_the_secret(world: World) -> None:
    """A revoked token's sign-in is refused and audited as auth.login on its account:
    the token's id, its owner, result refused, reason revoked_token, never the secret."""
    token_id, secret = world.token_ids["carol"], world.secrets["carol"]
    await world.runtime.service.revoke_token(CLI, token_id)
    await world.runtime.deliver_changes()
    assert (await world.sign_in_token(secret)).status == 401
    logins = await _logins(world, "acme")
    assert logins[0][0] == token_id
    after = logins[0][1]
    assert isinstance(after, dict)
    assert after["result"] == "refused"
    assert after["reason"] == "revoked_token"
    assert after["principal"] == "carol"
    assert secret not in repr(await world.runtime.store.list_audit(None, limit=50))


@pytest.mark.parametrize(
    ("secret", "target", "reason"),
    [
        ("pgt_0123456789abcdef_" + "A" * 43, "0123456789abcdef", "invalid_token"),
        ("pgt_not-a-real-token", "(no token id)", "invalid_token"),
        ("eyJhbGciOiJub25lIn0.e30.", "(no token id)", "invalid_token"),
    ],
    ids=["unknown-id", "malformed", "jwt"],
)
async def test_sign_in_with_a_token_naming_nobody_is_audited(
    world: World, secret: str, target: str, reason: str
) -> None:
    """A secret that names no token of any account is audited without an account: the
    id it names (or none), the reason, never the secret."""
    assert (await world.sign_in_token(secret)).status == 401
    records = [r for r in await world.runtime.store.list_audit(None) if r.action == "auth.login"]
    assert records[0].account is None
    assert records[0].target == target
    assert isinstance(records[0].after, dict)
    assert records[0].after["reason"] == reason
    assert secret not in repr(records)


async def test_token_sign_in_with_a_wrong_secret_shows_on_the_audit_page(world: World) -> None:
    """alice's token id with a wrong random part: the admin sees the refused sign-in on
    the Audit page under that token id."""
    token_id = world.token_ids["alice"]
    forged = f"pgt_{token_id}_" + "B" * 43
    assert (await world.sign_in_token(forged)).status == 401
    await world.sign_in("root")
    audit = await world.get(f"/console/audit?action=auth.login&target={token_id}")
    assert audit.text.count("<code>auth.login</code>") == 1
    assert forged not in audit.text


async def test_token_sign_in_success_is_audited(world: World) -> None:
    """A token sign-in that succeeds is audited too (result ok), as password ones are."""
    assert (await world.sign_in_token(world.secrets["carol"])).status == 200
    target, after = (await _logins(world, "acme"))[0]
    assert target == world.token_ids["carol"]
    assert isinstance(after, dict) and after["result"] == "ok"


async def test_password_sign_in_audit_is_unchanged(world: World) -> None:
    """A failed password sign-in is still audited under the principal id typed."""
    assert (await world.sign_in("alice", "not-her-password-1")).status == 401
    target, after = (await _logins(world, "acme"))[0]
    assert target == "alice"
    assert isinstance(after, dict) and after["reason"] == "bad_credentials"
    assert PASSWORD not in repr(after)
