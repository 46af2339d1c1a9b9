"""``POST /v1/diff``: the same answer as ``permgate diff --json`` on the same inputs
(the live store and the gateway's map as the old side), confined to the caller's
account, and its refusals."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import TEST_MAP, Gateway

# alice's sales-agent may now issue quotes (gains), readers lose quotes.read.
NEW_POLICY = """
accounts:
  - id: acme
    roles:
      - {name: sales-agent, permissions: [quotes.read, quotes.write, policies.write]}
      - {name: reader, permissions: [quote.fetch]}
"""
# quotes.get now needs quotes.write too.
NEW_MAP = TEST_MAP.replace(
    "permissions: [quotes.read]}\n  - {id: quotes.issue",
    "permissions: [quotes.read, quotes.write]}\n  - {id: quotes.issue",
)


def permgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "permgate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def post_diff(
    http: aiohttp.ClientSession, gw: Gateway, body: object, credential: str = "root"
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {gw.tokens[credential]}"}
    async with http.post(f"{gw.admin_url}/v1/diff", json=body, headers=headers) as response:
        return response.status, await response.json()


async def cli_diff(gw: Gateway, tmp_path: Path, *args: str) -> dict[str, Any]:
    """``permgate diff --json`` on the gateway's store, its map as the old map."""
    result = await asyncio.to_thread(
        permgate,
        "diff",
        "--store",
        gw.runtime.settings.store,
        "--map",
        str(tmp_path / "endpoint_map.yaml"),
        *args,
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # these inputs all change access
    document: dict[str, Any] = json.loads(result.stdout)
    return document


async def test_policy_change_answers_as_the_cli(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A new policy as YAML text: the API's impact equals the CLI's, and is not empty."""
    (tmp_path / "new.yaml").write_text(NEW_POLICY, encoding="utf-8")
    expected = await cli_diff(
        gw, tmp_path, "--to-map", str(tmp_path / "endpoint_map.yaml"), "--to-policy", "new.yaml"
    )
    status, answer = await post_diff(http, gw, {"policy": NEW_POLICY})
    assert status == 200, answer
    assert answer == expected
    assert answer["gained"] and answer["lost"]


async def test_map_change_answers_as_the_cli(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A new map as YAML text, the live policy unchanged: the same answer as the CLI."""
    (tmp_path / "new-map.yaml").write_text(NEW_MAP, encoding="utf-8")
    expected = await cli_diff(gw, tmp_path, "--to-map", "new-map.yaml")
    status, answer = await post_diff(http, gw, {"map": NEW_MAP})
    assert status == 200, answer
    assert answer == expected
    assert {c["endpoint"] for c in answer["lost"]} == {"quotes.get"}


async def test_policy_and_map_as_json_objects(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Both sides given as JSON objects rather than YAML text: the same answer."""
    import yaml

    (tmp_path / "new.yaml").write_text(NEW_POLICY, encoding="utf-8")
    (tmp_path / "new-map.yaml").write_text(NEW_MAP, encoding="utf-8")
    expected = await cli_diff(gw, tmp_path, "--to-map", "new-map.yaml", "--to-policy", "new.yaml")
    body = {"policy": yaml.safe_load(NEW_POLICY), "map": yaml.safe_load(NEW_MAP)}
    status, answer = await post_diff(http, gw, body)
    assert (status, answer) == (200, expected)


async def test_no_change_is_empty(gw: Gateway, http: aiohttp.ClientSession) -> None:
    """The current map again: nothing gained, nothing lost."""
    status, answer = await post_diff(http, gw, {"map": TEST_MAP})
    assert (status, answer) == (200, {"gained": [], "lost": []})


@pytest.mark.parametrize(
    ("body", "credential", "status", "detail"),
    [
        ({}, "root", 422, "give policy and/or map"),
        ({"policy": 3}, "root", 422, "body.policy: expected YAML text"),
        ({"map": "version: 1\nendpoints: nope\n"}, "root", 422, "body.map"),
        ({"policy": "accounts:\n  - id: globex\n"}, "root", 422, "'globex'"),
        ({"map": TEST_MAP, "extra": 1}, "root", 422, "unknown field(s) 'extra'"),
        ({"map": TEST_MAP, "prune": True}, "root", 422, "body.prune"),
        ({"map": TEST_MAP}, "bob", 403, ""),
    ],
    ids=[
        "nothing-to-compare",
        "policy-not-text",
        "broken-map",
        "another-account",
        "unknown-field",
        "prune-without-policy",
        "without-roles-and-principals-read",
    ],
)
async def test_refusals(
    gw: Gateway,
    http: aiohttp.ClientSession,
    body: object,
    credential: str,
    status: int,
    detail: str,
) -> None:
    """Bad bodies are 422 naming the field; a policy may name only the caller's
    account; the diff needs roles.read and principals.read."""
    got, answer = await post_diff(http, gw, body, credential)
    assert got == status, answer
    assert detail in answer["detail"]
