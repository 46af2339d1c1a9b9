"""``permgate advise`` and ``GET /v1/principals/{id}/advice``: unused grants, the
narrowest grants and tenants covering real usage, a narrower token; the window."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import Gateway, seed
from permgate.core.token_secrets import token_id_of
from permgate.manage.service import DEFAULT_TOKEN_PREFIX, ModelService
from permgate.store import open_store
from permgate.store.sql import UsageRow

DAY = 86_400.0
NOW = time.time()


def permgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m permgate ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "permgate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def use(
    principal: str,
    token: str | None,
    tenant: str | None,
    permission: str,
    uses: int,
    days_ago: float,
) -> UsageRow:
    last = NOW - days_ago * DAY
    return UsageRow(principal, token, tenant, permission, "acme", last - DAY, last, uses)


class World:
    """A seeded store with a crafted usage history, and the ids a test needs."""

    def __init__(self, path: Path, tokens: dict[str, str]) -> None:
        self.path = path
        self.store = f"sqlite://{path / 'permgate.db'}"
        self.alice_token = token_id_of(DEFAULT_TOKEN_PREFIX, tokens["alice"]) or ""
        self.bob_token = token_id_of(DEFAULT_TOKEN_PREFIX, tokens["bob"]) or ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """alice (sales-agent: quotes.read, quotes.write) read quotes on acme-prod through
    her token and on acme-shadow with her own credentials recently, and wrote one quote
    200 days ago; bob (reader + legacy) used only quote.fetch; root (admin) read once."""
    path = tmp_path_factory.mktemp("advise")

    async def build() -> World:
        store = await open_store(f"sqlite://{path / 'permgate.db'}")
        try:
            tokens = await seed(ModelService(store))
            made = World(path, tokens)
            await store.add_usage(
                [
                    use("alice", made.alice_token, "acme-prod", "quotes.read", 4, 1),
                    use("alice", None, "acme-shadow", "quotes.read", 2, 2),
                    use("alice", made.alice_token, "acme-prod", "quotes.write", 1, 200),
                    use("bob", made.bob_token, "acme-test", "quote.fetch", 7, 3),
                    use("root", None, None, "authTokens.write", 1, 5),
                ]
            )
        finally:
            await store.close()
        return made

    return asyncio.run(build())


def advise_json(world: World, *args: str) -> dict[str, Any]:
    result = permgate("advise", *args, "--store", world.store, "--json", cwd=world.path)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def used(permission: str, tenant: str | None, count: int, days_ago: float) -> dict[str, Any]:
    return {
        "permission": permission,
        "tenant": tenant,
        "count": count,
        "last_used": stamp(NOW - days_ago * DAY),
    }


def test_principal_advice_is_exact(world: World) -> None:
    """alice in the last 90 days: her reads on two tenants (token uses included), her
    write grant unused (its one use is older), suggestions exact."""
    assert advise_json(world, "--principal", "alice") == {
        "subject": "alice",
        "kind": "principal",
        "days": 90,
        "used": [
            used("quotes.read", "acme-prod", 4, 1),
            used("quotes.read", "acme-shadow", 2, 2),
        ],
        "unused_grants": ["quotes.write"],
        "suggested_grants": ["quotes.read"],
        "suggested_tenants": ["acme-prod", "acme-shadow"],
    }


def test_token_advice_is_a_narrower_token(world: World) -> None:
    """alice's token: only its own uses; quotes.write unused; the narrower token holds
    quotes.read on acme-prod alone."""
    document = advise_json(world, "--token", world.alice_token)
    assert document == {
        "subject": world.alice_token,
        "kind": "token",
        "days": 90,
        "used": [used("quotes.read", "acme-prod", 4, 1)],
        "unused_grants": ["quotes.write"],
        "suggested_grants": ["quotes.read"],
        "suggested_tenants": ["acme-prod"],
    }


def test_token_text_prints_the_commands_to_replace_it(world: World) -> None:
    """The text form ends with the tokens create line of the narrower token and the
    revoke line of the old one."""
    result = permgate(
        "advise", "--token", world.alice_token, "--store", world.store, cwd=world.path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-3:] == [
        "a narrower token to replace it:",
        "  permgate tokens create --owner alice --name 'alice (narrowed)' "
        "--permission quotes.read --tenant acme-prod",
        f"  permgate tokens revoke {world.alice_token}",
    ]


@pytest.mark.parametrize(
    ("days", "expected_used", "unused"),
    [
        ("90", [("quotes.read", "acme-prod"), ("quotes.read", "acme-shadow")], ["quotes.write"]),
        ("1", [], ["quotes.read", "quotes.write"]),
        (
            "365",
            [
                ("quotes.read", "acme-prod"),
                ("quotes.read", "acme-shadow"),
                ("quotes.write", "acme-prod"),
            ],
            [],
        ),
    ],
    ids=["default-window", "one-day-excludes-everything", "a-year-includes-the-old-write"],
)
def test_days_sets_the_window(
    world: World, days: str, expected_used: list[tuple[str, str]], unused: list[str]
) -> None:
    """Uses whose last use is older than the window do not count, and a grant whose
    uses all fall outside it is unused."""
    document = advise_json(world, "--principal", "alice", "--days", days)
    assert [(u["permission"], u["tenant"]) for u in document["used"]] == expected_used
    assert document["unused_grants"] == unused
    assert document["days"] == int(days)


@pytest.mark.parametrize(
    ("principal", "unused", "suggested", "tenants"),
    [
        ("bob", ["quotes.read"], ["quote.fetch"], ["acme-test"]),
        ("root", [], ["authTokens.write"], []),
        ("erin", ["quotes.price"], [], []),
    ],
    ids=["one-role-of-two-unused", "admin-star-used-tenantless", "nothing-used"],
)
def test_unused_grants_per_principal(
    world: World, principal: str, unused: list[str], suggested: list[str], tenants: list[str]
) -> None:
    """A grant is used when it covers an exercised permission (*.* covers anything); an
    endpoint without a tenant adds no suggested tenant; no use leaves every grant unused
    (the read rule of read-only is not a grant and is not listed)."""
    document = advise_json(world, "--principal", principal)
    assert (
        document["unused_grants"],
        document["suggested_grants"],
        document["suggested_tenants"],
    ) == (unused, suggested, tenants)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--principal", "nobody"], "permgate advise: principal 'nobody' not found"),
        (["--token", "0123"], "permgate advise: token '0123' not found"),
        (
            ["--principal", "alice", "--days", "0"],
            "permgate advise: --days 0: must be a whole number of days from 1 to 3650",
        ),
        (
            ["--principal", "alice", "--days", "ninety"],
            "permgate advise: --days ninety: must be a whole number of days from 1 to 3650",
        ),
    ],
    ids=["unknown-principal", "unknown-token", "zero-days", "days-not-a-number"],
)
def test_bad_input_exits_2_with_one_line(world: World, args: list[str], message: str) -> None:
    """Bad input or an unknown subject: exit 2, one line on stderr, nothing on stdout."""
    result = permgate("advise", *args, "--store", world.store, cwd=world.path)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [message])


def test_missing_store_file_is_refused_not_created(tmp_path: Path) -> None:
    """A SQLite store that does not exist: exit 2, and no file is created."""
    store = tmp_path / "missing.db"
    result = permgate(
        "advise", "--principal", "alice", "--store", f"sqlite://{store}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert not store.exists()


# -- through a real gateway and the admin API ---------------------------------------


async def get(http: aiohttp.ClientSession, url: str, credential: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers={"Authorization": f"Bearer {credential}"}) as response:
        return response.status, await response.json()


async def test_usage_through_a_gateway_is_what_advise_reads(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Requests with alice's token through a real gateway, flushed, read back by the
    CLI (a separate process on the same SQLite store) and by the admin API alike."""
    headers = {"Authorization": f"Bearer {gw.tokens['alice']}"}
    for _ in range(3):
        async with http.get(f"{gw.url}/policy/acme-prod/quotes/q1", headers=headers) as response:
            assert response.status == 200
    async with http.post(f"{gw.url}/policy/acme-prod/quotes", headers=headers) as response:
        assert response.status == 200
    await gw.runtime.flush_usage()
    token = token_id_of(gw.runtime.settings.auth.token_prefix, gw.tokens["alice"])
    assert token is not None
    store = gw.runtime.settings.store
    result = await asyncio.to_thread(
        permgate, "advise", "--token", token, "--store", store, "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [(u["permission"], u["tenant"], u["count"]) for u in document["used"]] == [
        ("quotes.read", "acme-prod", 3),
        ("quotes.write", "acme-prod", 1),
    ]
    assert (document["unused_grants"], document["suggested_tenants"]) == ([], ["acme-prod"])
    principal = await asyncio.to_thread(
        permgate, "advise", "--principal", "alice", "--store", store, "--json", cwd=tmp_path
    )
    status, answer = await get(
        http, f"{gw.admin_url}/v1/principals/alice/advice", gw.tokens["root"]
    )
    assert status == 200
    assert answer == json.loads(principal.stdout)


async def test_api_days_parameter_sets_the_window(gw: Gateway, http: aiohttp.ClientSession) -> None:
    """?days=N on the API: a use older than N days is left out."""
    await gw.runtime.store.add_usage([use("alice", None, "acme-prod", "quotes.write", 2, 30)])
    url = f"{gw.admin_url}/v1/principals/alice/advice"
    status, recent = await get(http, url + "?days=7", gw.tokens["root"])
    assert (status, recent["days"], recent["used"]) == (200, 7, [])
    status, month = await get(http, url + "?days=31", gw.tokens["root"])
    assert (status, month["used"]) == (200, [used("quotes.write", "acme-prod", 2, 30)])


@pytest.mark.parametrize(
    ("path", "credential", "status", "error"),
    [
        ("/v1/principals/gus/advice", "root", 404, "not_found"),
        ("/v1/principals/nobody/advice", "root", 404, "not_found"),
        ("/v1/principals/alice/advice?days=0", "root", 422, "invalid"),
        ("/v1/principals/alice/advice", "bob", 403, "forbidden"),
    ],
    ids=["other-account", "unknown", "zero-days", "without-principals-read"],
)
async def test_api_refusals(
    gw: Gateway, http: aiohttp.ClientSession, path: str, credential: str, status: int, error: str
) -> None:
    """Another account's principal is as unknown as a missing one; a bad window is
    422; reading advice needs principals.read."""
    got, body = await get(http, gw.admin_url + path, gw.tokens[credential])
    assert (got, body["error"]) == (status, error)
