"""The console in a real browser: Playwright driving Debian's Chromium against a real
admin listener on loopback, and axe-core on every page (no serious or critical
violation of WCAG 2.1 AA).

Without Chromium or Playwright these tests skip with the reason, except under
``CI=true`` where they fail: CI installs both. Set ``PERMGATE_CONSOLE_SCREENSHOTS`` to
a folder to save a PNG of each page there (docs/screenshots holds the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from console_world import PASSWORD, seed
from harness import free_port
from permgate.runtime.app import Runtime

CHROMIUM = os.environ.get("PERMGATE_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("PERMGATE_CONSOLE_SCREENSHOTS")


def _need_browser() -> Any:
    """The Playwright async API, or a skip (a failure under CI=true) saying what is missing."""
    missing = None
    try:
        from playwright import async_api
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing is None and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    return async_api


@pytest.fixture
async def console_url(runtime: Runtime) -> AsyncIterator[str]:
    """The seeded runtime's admin application served on a loopback port."""
    await seed(runtime)
    runner = web.AppRunner(runtime.admin_application(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/console"
    finally:
        await runner.cleanup()


@pytest.fixture
async def page(console_url: str) -> AsyncIterator[Any]:
    """A fresh Chromium page (headless, no sandbox: CI runs as root)."""
    api = _need_browser()
    async with api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        opened = await context.new_page()
        opened.set_default_timeout(15000)
        try:
            yield opened
        finally:
            await context.close()
            await browser.close()


async def _sign_in(page: Any, base: str, principal: str = "root") -> None:
    await page.goto(f"{base}/login")
    await page.get_by_label("Principal").fill(principal)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").first.click()
    await page.wait_for_url(f"{base}/")


async def _grid_cell(page: Any, base: str, principal: str, group: str, tenant: str) -> str:
    await page.goto(f"{base}/access?principal={principal}")
    grid = page.get_by_test_id("access-grid")
    columns = [c.strip() for c in await grid.locator("thead th").all_inner_texts()]
    row = grid.locator("tbody tr").filter(has=page.locator("th", has_text=group))
    cells = await row.locator("td").all_inner_texts()
    return str(cells[columns.index(tenant) - 1]).split()[0]


async def test_an_administrator_works_through_the_console(page: Any, console_url: str) -> None:
    """Sign in, create a role, assign it, see the access map change, revoke a token,
    sign out: every step with the mouse-free form controls a user would use."""
    base = console_url
    await _sign_in(page, base)
    assert await page.get_by_test_id("principal-id").inner_text() == "root"
    assert await _grid_cell(page, base, "dave", "quotes", "acme-prod") == "none"

    await page.goto(f"{base}/roles/new")
    await page.get_by_label("Name", exact=True).fill("quote-reader")
    await page.get_by_label("Display name").fill("Quote Reader")
    await page.locator("summary", has_text="quotes").click()
    await page.get_by_label("quotes.read", exact=True).check()
    await page.get_by_role("button", name="Create role").click()
    await page.get_by_text("Role quote-reader created.").wait_for()

    await page.goto(f"{base}/users/view?id=dave")
    await page.get_by_label("Role", exact=True).select_option("quote-reader")
    await page.get_by_role("button", name="Add role").click()
    await page.get_by_text("Role quote-reader added to dave.").wait_for()

    assert await _grid_cell(page, base, "dave", "quotes", "acme-prod") == "some"

    await page.goto(f"{base}/tokens")
    await page.get_by_role("button", name="Revoke token carol").click()
    await page.get_by_text("Token carol (").wait_for()
    row = page.locator("tr", has=page.locator("th", has_text="carol"))
    assert "revoked" in await row.inner_text()

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/login")
    await page.goto(f"{base}/roles")
    assert page.url.startswith(f"{base}/login")


async def test_keyboard_reaches_the_skip_link_with_a_visible_focus(
    page: Any, console_url: str
) -> None:
    """The first Tab lands on "Skip to content", drawn with a visible outline."""
    await _sign_in(page, console_url)
    await page.keyboard.press("Tab")
    focused = await page.evaluate(
        "() => [document.activeElement.textContent, "
        "getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert focused[0] == "Skip to content"
    assert focused[1] != "none"


PAGES = [
    ("login", "/login"),
    ("overview", "/"),
    ("roles", "/roles"),
    ("role-create", "/roles/new"),
    ("role-edit", "/roles/edit?name=ops"),
    ("users", "/users"),
    ("user-roles", "/users/view?id=alice"),
    ("user-tenants", "/users/view?id=alice&tab=tenants"),
    ("tenants", "/tenants"),
    ("tenant-enforce", "/tenants/enforce?id=acme-test"),
    ("tokens", "/tokens"),
    ("audit", "/audit"),
    ("explain", "/explain?principal=carol&method=POST&path=/policy/acme-prod/quotes"),
    ("access-principal", "/access?principal=alice"),
    ("access-endpoint", "/access?endpoint=quotes.get"),
]


@pytest.mark.parametrize(("name", "path"), PAGES, ids=[n for n, _ in PAGES])
async def test_page_has_no_serious_accessibility_violation(
    page: Any, console_url: str, name: str, path: str
) -> None:
    """axe-core finds no serious or critical WCAG 2.1 AA violation on the page."""
    from axe_playwright_python.async_playwright import Axe

    if name != "login":
        await _sign_in(page, console_url)
    await page.goto(console_url + path)
    if name == "role-create":  # the picker open, as someone choosing would have it
        for group in ("quotes", "roles"):
            await page.locator("summary", has_text=group).first.click()
    results = await Axe().run(
        page,
        options={
            "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}
        },
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == []
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)
