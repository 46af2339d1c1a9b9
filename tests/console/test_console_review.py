"""The console's least-privilege advice (user and token pages) and the first-password
rule for token sessions, against the real admin application on a real store."""

from __future__ import annotations

import html
import time
from urllib.parse import urlencode

import pytest
from console_world import OPS, World

from permgate.service import Actor
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
