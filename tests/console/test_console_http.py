"""The console over HTTP: sign-in, cookies, CSRF, session ends, and the model's rules
enforced server-side, against the real admin application on a real store."""

from __future__ import annotations

import asyncio
import html
from typing import Any

import pytest
from aiohttp import web

from console_world import PASSWORD, World
from permgate.console import create_console
from permgate.console.session import LOGIN_COOKIE, SESSION_COOKIE


def _set_cookie(page_headers: object, name: str) -> str:
    """The Set-Cookie header line that sets ``name``."""
    lines = page_headers.getall("Set-Cookie", [])  # type: ignore[attr-defined]
    found = [line for line in lines if line.startswith(f"{name}=")]
    assert found, f"no Set-Cookie for {name} in {lines}"
    return str(found[0])


async def _post_raw(world: World, path: str, data: dict[str, str]) -> tuple[int, str, object]:
    async with world.client.post(path, data=data, allow_redirects=False) as response:
        return response.status, await response.text(), response.headers


# -- sign-in and cookies -------------------------------------------------------------


async def test_sign_in_page_has_the_labelled_fields_and_button(world: World) -> None:
    """The sign-in form posts principal, password (or token) and csrf; labels and the
    button read as the contract says."""
    page = await world.get("/console/login")
    assert page.status == 200
    for snippet in (
        'name="principal"',
        'name="password"',
        'name="token"',
        'name="csrf"',
        '<label for="principal">Principal</label>',
        '<label for="password">Password</label>',
        '<button type="submit">Sign in</button>',
    ):
        assert snippet in page.text


async def test_session_cookie_is_httponly_strict_and_scoped(world: World) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, on /console/, and not Secure
    over plain HTTP (a browser would drop a Secure cookie there)."""
    form = await world.get("/console/login")
    status, _, headers = await _post_raw(
        world, "/console/login", {"csrf": form.csrf, "principal": "root", "password": PASSWORD}
    )
    assert status == 303
    line = _set_cookie(headers, SESSION_COOKIE)
    assert "HttpOnly" in line
    assert "SameSite=Strict" in line
    assert "Path=/console/" in line
    assert "Secure" not in line
    assert "Max-Age=43200" in line  # the absolute lifetime, twelve hours


async def test_signed_in_pages_show_the_principal_and_sign_out(world: World) -> None:
    """After sign-in every page names the principal and offers Sign out."""
    page = await world.sign_in("root")
    assert page.path == "/console/"
    assert 'data-testid="principal-id">root<' in page.text
    assert ">Sign out</button>" in page.text


@pytest.mark.parametrize(
    ("principal", "password", "message"),
    [
        ("root", "wrong-password-123", "the principal or the password is wrong"),
        ("nobody", PASSWORD, "the principal or the password is wrong"),
    ],
    ids=["wrong-password", "unknown-principal"],
)
async def test_refused_sign_in_says_so_without_telling_which(
    world: World, principal: str, password: str, message: str
) -> None:
    """A wrong password and an unknown principal get the same 401 page, no session."""
    page = await world.sign_in(principal, password)
    assert page.status == 401
    assert message in page.text
    assert SESSION_COOKIE not in {c.key for c in world.client.session.cookie_jar}


async def test_repeated_failures_lock_sign_in_and_are_audited(world: World) -> None:
    """After ten failures even the right password is refused as locked; an admin sees
    the refused sign-ins on the Audit page, never a password."""
    for _ in range(10):
        assert (await world.sign_in("alice", "not-her-password-1")).status == 401
    page = await world.sign_in("alice")
    assert page.status == 401
    assert "locked" in page.text
    world.forget_cookies()
    await world.sign_in("root")
    audit = await world.get("/console/audit?action=auth.login&target=alice")
    assert audit.text.count("<code>auth.login</code>") == 11
    assert "not-her-password-1" not in audit.text


async def test_sign_in_with_an_auth_token(world: World) -> None:
    """An auth token signs its owner in; the page says which token."""
    page = await world.sign_in_token(world.secrets["carol"])
    assert page.status == 200
    assert 'data-testid="principal-id">carol<' in page.text
    assert "auth token <code>carol</code>" in page.text


@pytest.mark.parametrize(
    "secret",
    ["pgt_not-a-real-token", "eyJhbGciOiJub25lIn0.e30."],
    ids=["unknown-token", "not-an-auth-token"],
)
async def test_sign_in_with_a_bad_token_is_refused(world: World, secret: str) -> None:
    """A token that authenticates nobody is refused with 401."""
    page = await world.sign_in_token(secret)
    assert page.status == 401
    assert "auth token is not valid" in page.text


async def test_signed_out_request_goes_to_sign_in(world: World) -> None:
    """Without a session, a page answers 303 to the sign-in page (remembering where)."""
    async with world.client.get("/console/roles", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/console/login?next=%2Fconsole%2Froles"


async def test_sign_in_returns_to_the_page_asked_for(world: World) -> None:
    """``next`` brings the principal back to the console page it asked for."""
    form = await world.get("/console/roles")
    assert form.path == "/console/login"
    page = await world.post(
        "/console/login",
        {"csrf": form.csrf, "principal": "root", "password": PASSWORD, "next": "/console/roles"},
    )
    assert page.path == "/console/roles"


async def test_sign_in_never_redirects_off_the_console(world: World) -> None:
    """A ``next`` outside the console is ignored (no open redirect)."""
    form = await world.get("/console/login")
    status, _, headers = await _post_raw(
        world,
        "/console/login",
        {
            "csrf": form.csrf,
            "principal": "root",
            "password": PASSWORD,
            "next": "//evil.example/console/",
        },
    )
    assert status == 303
    assert headers["Location"] == "/console/"  # type: ignore[index]


# -- CSRF --------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [None, "", "wrong-token"], ids=["missing", "empty", "wrong"])
async def test_sign_in_without_the_double_submit_token_is_refused(
    world: World, sent: str | None
) -> None:
    """The sign-in form must echo its cookie's CSRF value; otherwise 403, no session."""
    await world.get("/console/login")
    data = {"principal": "root", "password": PASSWORD}
    if sent is not None:
        data["csrf"] = sent
    status, text, _ = await _post_raw(world, "/console/login", data)
    assert status == 403
    assert "sign in again" in text
    assert SESSION_COOKIE not in {c.key for c in world.client.session.cookie_jar}


async def test_sign_in_without_the_cookie_is_refused(world: World) -> None:
    """A form value with no matching cookie (another site's post) is refused."""
    form = await world.get("/console/login")
    world.client.session.cookie_jar.clear()
    status, _, _ = await _post_raw(
        world, "/console/login", {"csrf": form.csrf, "principal": "root", "password": PASSWORD}
    )
    assert status == 403
    assert LOGIN_COOKIE


@pytest.mark.parametrize("sent", [None, "wrong-token"], ids=["missing", "wrong"])
async def test_a_change_without_the_session_csrf_token_is_refused(
    world: World, sent: str | None
) -> None:
    """A state-changing post needs the session's CSRF token: 403, nothing changes."""
    await world.sign_in("root")
    data = {"name": "sneaky", "display_name": "Sneaky", "permissions": "quotes.read"}
    if sent is not None:
        data["csrf"] = sent
    status, text, _ = await _post_raw(world, "/console/roles", data)
    assert status == 403
    assert "CSRF" in text
    roles = await world.runtime.store.get_roles("acme")
    assert "sneaky" not in roles


async def test_sign_out_needs_the_csrf_token(world: World) -> None:
    """A cross-site post to sign-out (no token) does not end the session."""
    await world.sign_in("root")
    status, _, _ = await _post_raw(world, "/console/logout", {})
    assert status == 403
    assert (await world.get("/console/")).path == "/console/"


# -- sessions end -----------------------------------------------------------------


async def test_sign_out_ends_the_session_on_the_server(world: World) -> None:
    """After sign-out the old cookie opens nothing, even replayed by hand."""
    await world.sign_in("root")
    secret = next(c.value for c in world.client.session.cookie_jar if c.key == SESSION_COOKIE)
    csrf = await world.csrf()
    page = await world.post("/console/logout", {"csrf": csrf})
    assert page.path == "/console/login"
    assert await world.runtime.service.console_session(secret) is None
    world.client.session.cookie_jar.update_cookies({SESSION_COOKIE: secret})
    assert (await world.get("/console/roles")).path == "/console/login"


async def _alice_signed_in_then(world: World, change: str) -> None:
    """Sign alice in, let root make ``change`` from another browser session."""
    await world.sign_in("alice")
    assert (await world.get("/console/users")).status == 200
    alice_cookies = {c.key: c.value for c in world.client.session.cookie_jar}
    world.forget_cookies()
    await world.sign_in("root")
    csrf = await world.csrf()
    forms = {
        "role-removed": ("/console/users/roles/remove", {"id": "alice", "role": "ops"}),
        "disabled": ("/console/users/status", {"id": "alice", "disabled": "true"}),
        "password-set": (
            "/console/users/password",
            {"id": "alice", "password": "a-brand-new-passphrase-77"},
        ),
    }
    path, data = forms[change]
    page = await world.post(path, {"csrf": csrf, **data})
    assert page.status == 200, page.text
    assert "error" not in page.text.split("<main", 1)[1][:400]
    world.forget_cookies()
    world.client.session.cookie_jar.update_cookies(alice_cookies)


@pytest.mark.parametrize("change", ["role-removed", "disabled", "password-set"])
async def test_session_ends_at_once_when(world: World, change: str) -> None:
    """Losing a role, being disabled or having a password set ends alice's console
    session at once: her next page is the sign-in page."""
    await _alice_signed_in_then(world, change)
    assert (await world.get("/console/users")).path == "/console/login"


# -- the model's rules, server-side -----------------------------------------------------


async def test_without_roles_write_a_role_cannot_be_created(world: World) -> None:
    """alice (no roles.write, not admin) posting the create form gets 403 and the
    refusal's words; the role does not exist."""
    await world.sign_in("alice")
    csrf = await world.csrf()
    page = await world.post(
        "/console/roles",
        {"csrf": csrf, "name": "mine", "display_name": "Mine", "permissions": "quotes.read"},
    )
    assert page.status == 403
    assert "roles.write" in page.text or "only admins" in page.text
    assert "mine" not in await world.runtime.store.get_roles("acme")


async def test_navigation_shows_only_what_the_grants_open(world: World) -> None:
    """carol (quotes only) sees no admin section, and a section's URL answers 403."""
    await world.sign_in("carol")
    home = await world.get("/console/")
    assert "Your permissions open no section" in home.text
    page = await world.get("/console/users")
    assert page.status == 403
    assert "principals.read" in page.text


async def test_a_token_session_is_capped_by_its_token(world: World) -> None:
    """Signed in with a quotes.read token, even its owner's wider rights do not apply."""
    await world.sign_in_token(world.secrets["alice"])
    assert (await world.get("/console/users")).status == 200
    world.forget_cookies()
    await world.sign_in_token(world.secrets["carol"])
    assert (await world.get("/console/tenants")).status == 403


async def test_admin_creates_a_role_from_the_picker(world: World) -> None:
    """Picked permissions and typed grants make the role; the page says so."""
    await world.sign_in("root")
    csrf = await world.csrf()
    page = await world.post(
        "/console/roles",
        {
            "csrf": csrf,
            "name": "pricing",
            "display_name": "Pricing",
            "permissions": ["quotes.read", "quotes.price"],
            "extra": "policies.*",
        },
    )
    assert page.path == "/console/roles"
    assert "Role pricing created." in page.text
    role = (await world.runtime.store.get_roles("acme"))["pricing"]
    assert set(role.permissions) == {"quotes.read", "quotes.price", "policies.*"}


async def test_role_picker_shows_the_endpoints_each_permission_unlocks(world: World) -> None:
    """The picker groups permissions by group and names the live map's endpoints."""
    await world.sign_in("root")
    page = await world.get("/console/roles/new")
    assert "<summary>quotes" in page.text
    assert 'value="quotes.write"' in page.text
    assert "quotes.create" in page.text  # the endpoint quotes.write unlocks


async def test_an_invalid_grant_shows_the_services_words(world: World) -> None:
    """A refused create re-renders the form with the service's message and 422."""
    await world.sign_in("root")
    csrf = await world.csrf()
    page = await world.post(
        "/console/roles",
        {"csrf": csrf, "name": "bad", "display_name": "Bad", "extra": "*.read"},
    )
    assert page.status == 422
    assert "'*.read' is not allowed" in html.unescape(page.text)
    assert "Traceback" not in page.text


async def test_deleting_an_assigned_role_names_its_holders(world: World) -> None:
    """The refusal (409) names who holds the role; the role stays."""
    await world.sign_in("root")
    csrf = await world.csrf()
    page = await world.post("/console/roles/delete", {"csrf": csrf, "name": "agent"})
    assert page.status == 409
    assert "held by: carol" in page.text
    assert "agent" in await world.runtime.store.get_roles("acme")


async def test_enforce_switch_needs_the_one_way_confirmation(world: World) -> None:
    """Without ticking the one-way box the switch is refused; with it, it happens."""
    await world.sign_in("root")
    confirm = await world.get("/console/tenants/enforce?id=acme-test")
    assert "This switch is one-way" in confirm.text
    refused = await world.post(
        "/console/tenants/enforce", {"csrf": confirm.csrf, "id": "acme-test"}
    )
    assert refused.status == 422
    assert (await world.runtime.store.get_tenant("acme-test")).enforcement == "shadow"  # type: ignore[union-attr]
    done = await world.post(
        "/console/tenants/enforce", {"csrf": confirm.csrf, "id": "acme-test", "confirm": "one-way"}
    )
    assert done.path == "/console/tenants"
    assert (await world.runtime.store.get_tenant("acme-test")).enforcement == "enforce"  # type: ignore[union-attr]


async def test_token_beyond_the_owner_is_refused_naming_the_excess(world: World) -> None:
    """carol cannot mint a token with a grant she lacks: 422 naming it."""
    await world.sign_in("alice")
    csrf = await world.csrf()
    page = await world.post(
        "/console/tokens",
        {"csrf": csrf, "name": "wide", "permissions": "roles.write", "tenants": "acme-prod"},
    )
    assert page.status == 422
    assert "permissions the owner does not hold: roles.write" in page.text


async def test_token_secret_is_shown_once_and_revoke_works(world: World) -> None:
    """The new token's secret is on the answer (not cached) and the token list never
    shows it; revoking marks it revoked."""
    await world.sign_in("root")
    csrf = await world.csrf()
    page = await world.post(
        "/console/tokens",
        {"csrf": csrf, "name": "ci", "permissions": "quotes.read", "tenants": "acme-prod"},
    )
    assert page.status == 200
    assert page.headers["Cache-Control"] == "no-store"
    secret = page.text.split('data-testid="token-secret"')[0].rsplit('value="', 1)[1].split('"')[0]
    assert secret.startswith("pgt_")
    listing = await world.get("/console/tokens")
    assert secret not in listing.text
    token = next(t for t in await world.runtime.store.list_tokens(owner="root") if t.name == "ci")
    done = await world.post("/console/tokens/revoke", {"csrf": csrf, "id": token.id})
    assert f"Token ci ({token.id}) revoked" in done.text
    revoked = await world.runtime.store.get_token(token.id)
    assert revoked is not None and revoked.revoked_at is not None


async def test_password_refused_by_the_policy_names_the_rules(world: World) -> None:
    """A password the policy refuses shows the refusal and leaves the password as it was."""
    await world.sign_in("root")
    csrf = await world.csrf()
    page = await world.post(
        "/console/users/password", {"csrf": csrf, "id": "carol", "password": "short"}
    )
    assert page.status == 422
    assert "password refused" in page.text
    world.forget_cookies()
    assert (await world.sign_in("carol")).path == "/console/"


async def test_anyone_sets_their_own_password_with_the_current_one(world: World) -> None:
    """carol (no principals permission) opens her own page and sets her password; her
    session ends and the new password signs her in."""
    await world.sign_in("carol")
    own = await world.get("/console/users/view?id=carol")
    assert own.status == 200
    assert 'name="current_password"' in own.text
    page = await world.post(
        "/console/users/password",
        {
            "csrf": own.csrf,
            "id": "carol",
            "current_password": PASSWORD,
            "password": "carol-picked-a-new-one-9",
        },
    )
    assert page.path == "/console/login"
    assert (await world.sign_in("carol", "carol-picked-a-new-one-9")).path == "/console/"


async def test_own_password_needs_the_right_current_one(world: World) -> None:
    """A wrong current password is refused with the service's words; nothing changes."""
    await world.sign_in("carol")
    own = await world.get("/console/users/view?id=carol")
    page = await world.post(
        "/console/users/password",
        {"csrf": own.csrf, "id": "carol", "current_password": "nope", "password": "x" * 20},
    )
    assert page.status == 403
    assert "current_password does not match" in page.text


# -- every page ---------------------------------------------------------------------

PAGES = [
    "/console/",
    "/console/roles",
    "/console/roles/new",
    "/console/roles/edit?name=ops",
    "/console/users",
    "/console/users/view?id=alice",
    "/console/users/view?id=alice&tab=tenants",
    "/console/tenants",
    "/console/tenants/enforce?id=acme-test",
    "/console/tokens",
    "/console/audit",
    "/console/audit?action=role&decision=deny",
    "/console/explain",
    "/console/explain?principal=carol&method=GET&path=/policy/acme-prod/quotes/q1",
    "/console/access",
    "/console/access?principal=carol",
    "/console/access?endpoint=quotes.get",
]


@pytest.mark.parametrize("path", PAGES, ids=PAGES)
async def test_every_page_answers_200_for_an_admin(world: World, path: str) -> None:
    """Each page renders for root, with a heading and the hardening headers."""
    await world.sign_in("root")
    page = await world.get(path)
    assert page.status == 200, page.text
    assert page.path == path.split("?")[0]
    assert "<h1>" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


async def test_other_accounts_objects_are_not_found(world: World) -> None:
    """root of acme cannot open globex's admin: 404 as for an unknown id."""
    await world.sign_in("root")
    page = await world.get("/console/users/view?id=gadmin")
    assert page.status == 404
    assert "not found" in page.text


async def test_explain_answers_with_the_gateways_reasons(world: World) -> None:
    """carol may read quotes on acme-prod but not create them: the missing permission."""
    await world.sign_in("root")
    page = await world.get(
        "/console/explain?principal=carol&method=POST&path=/policy/acme-prod/quotes"
    )
    assert 'Decision: <span class="d-allow">allow' in page.text
    page = await world.get(
        "/console/explain?principal=dave&method=POST&path=/policy/acme-prod/quotes"
    )
    assert "missing_permission" in page.text
    assert "quotes.write" in page.text


@pytest.mark.parametrize(
    ("idle", "lifetime", "keep_busy"),
    [(1, 3600, False), (3600, 1, True)],
    ids=["idle-timeout", "absolute-lifetime"],
)
async def test_session_expires(
    world: World, aiohttp_client: Any, idle: int, lifetime: int, keep_busy: bool
) -> None:
    """A session idle longer than the idle timeout ends; so does one past its absolute
    lifetime even while it is being used."""
    runtime = world.runtime
    app = web.Application()
    app.add_subapp(
        "/console/",
        create_console(
            service=runtime.service,
            authenticator=runtime.authenticator,
            model=runtime.model,
            endpoint_map=lambda: runtime.gateway.endpoint_map,
            on_committed=runtime.deliver_changes,
            idle_seconds=idle,
            lifetime_seconds=lifetime,
        ),
    )
    short = World(runtime, await aiohttp_client(app))
    assert (await short.sign_in("root")).path == "/console/"
    jar = short.client.session.cookie_jar
    secret = next(c.value for c in jar if c.key == SESSION_COOKIE)
    for _ in range(3 if keep_busy else 1):
        if keep_busy:
            assert (await short.get("/console/")).path == "/console/"
        await asyncio.sleep(0.45 if keep_busy else 1.1)
    # The server decides, not the cookie's Max-Age: replay the secret by hand.
    jar.update_cookies({SESSION_COOKIE: secret})
    assert (await short.get("/console/roles")).path == "/console/login"
