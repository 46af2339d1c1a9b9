"""``permgate diff`` as a user runs it: real processes, exit codes, the three formats,
and the live store (SQLite and PostgreSQL) as the old side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from review_worlds import BASE_MAP, BASE_POLICY, edited

ISSUE_LINE = (
    "+ {who} {tenant} quotes.issue (POST /policy/{{tenantLocator}}/quotes/{{locator}}/issue)"
)
AGENT_GRANTS = "[quotes.read, quotes.write]"
AGENT_ISSUES = "[quotes.read, quotes.write, quotes.issue]"


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


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The base map and policy, and a new policy in which agents may issue quotes."""
    (tmp_path / "map.yaml").write_text(BASE_MAP, encoding="utf-8")
    (tmp_path / "old.yaml").write_text(BASE_POLICY, encoding="utf-8")
    (tmp_path / "new.yaml").write_text(
        edited(BASE_POLICY, (AGENT_GRANTS, AGENT_ISSUES)), encoding="utf-8"
    )
    (tmp_path / "strict-map.yaml").write_text(
        edited(BASE_MAP, ("any_of: [quotes.write, quotes.create]", "any_of: [quotes.create]")),
        encoding="utf-8",
    )
    return tmp_path


EXPECTED_GAINS = [
    ISSUE_LINE.format(who="alice", tenant="acme-prod"),
    ISSUE_LINE.format(who="bob", tenant="acme-prod"),
    ISSUE_LINE.format(who="bob", tenant="acme-test"),
]


def test_policy_change_prints_each_gain_and_exits_1(files: Path) -> None:
    """A policy change: one line per gained (principal, tenant, endpoint), then a summary."""
    result = permgate(
        "diff", "--map", "map.yaml", "--to-map", "map.yaml",
        "--policy", "old.yaml", "--to-policy", "new.yaml", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        *EXPECTED_GAINS,
        "3 gained, 0 lost (2 principals, 1 endpoint)",
    ]


def test_json_lists_gained_and_lost_with_request_details(files: Path) -> None:
    """--json: one document, gained and lost items with principal, tenant, endpoint,
    method and path; nothing else on stdout."""
    result = permgate(
        "diff", "--map", "map.yaml", "--to-map", "strict-map.yaml",
        "--policy", "old.yaml", "--json", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    request = {
        "endpoint": "quotes.create",
        "method": "POST",
        "path": "/policy/{tenantLocator}/quotes",
    }
    assert document == {
        "gained": [],
        "lost": [
            {"principal": "alice", "tenant": "acme-prod", **request},
            {"principal": "bob", "tenant": "acme-prod", **request},
            {"principal": "bob", "tenant": "acme-test", **request},
        ],
    }


def test_json_tenant_is_null_for_an_entry_without_tenant(files: Path) -> None:
    """A change on a tenantless entry has tenant null in JSON."""
    (files / "users.yaml").write_text(
        edited(BASE_POLICY, (AGENT_GRANTS, "[quotes.read, quotes.write, users.read]")),
        encoding="utf-8",
    )
    result = permgate(
        "diff", "--map", "map.yaml", "--to-map", "map.yaml", "--policy", "old.yaml",
        "--to-policy", "users.yaml", "--json", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    gained = json.loads(result.stdout)["gained"]
    assert [(g["principal"], g["tenant"], g["endpoint"]) for g in gained] == [
        ("alice", None, "whoami"),
        ("bob", None, "whoami"),
    ]


def test_markdown_folds_tenants_into_one_row_per_principal_and_endpoint(files: Path) -> None:
    """--markdown: a heading with the summary, then a table row per principal and endpoint."""
    result = permgate(
        "diff", "--map", "map.yaml", "--to-map", "map.yaml",
        "--policy", "old.yaml", "--to-policy", "new.yaml", "--markdown", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    request = "`POST /policy/{tenantLocator}/quotes/{locator}/issue`"
    assert result.stdout.splitlines() == [
        "### permgate diff: 3 gained, 0 lost (2 principals, 1 endpoint)",
        "",
        "| | principal | tenants | endpoint | request |",
        "|---|---|---|---|---|",
        f"| **+** | alice | acme-prod | `quotes.issue` | {request} |",
        f"| **+** | bob | acme-prod, acme-test | `quotes.issue` | {request} |",
    ]


def test_markdown_stops_at_max_rows_and_says_how_many_more(files: Path) -> None:
    """--max-rows bounds the table (a PR comment has a size limit) and counts the rest."""
    result = permgate(
        "diff", "--map", "map.yaml", "--to-map", "map.yaml", "--policy", "old.yaml",
        "--to-policy", "new.yaml", "--markdown", "--max-rows", "1", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1
    assert "| **+** | bob |" not in result.stdout
    assert "… and 1 more rows: run `permgate diff` for the full list." in result.stdout


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ([], "no access changes\n"),
        (["--json"], '{"gained": [], "lost": []}\n'),
        (
            ["--markdown"],
            "### permgate diff: no access changes\n\n"
            "No principal gains or loses access to any endpoint on any tenant.\n",
        ),
    ],
    ids=["text", "json", "markdown"],
)
def test_no_change_exits_0(files: Path, output: list[str], expected: str) -> None:
    """Identical sides: exit 0 and a statement that nothing changes, in each format."""
    result = permgate(
        "diff", "--map", "map.yaml", "--to-map", "map.yaml", "--policy", "old.yaml", *output,
        cwd=files,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


BAD_INPUTS = {
    "a missing map file": (
        ["--map", "nowhere.yaml", "--to-map", "map.yaml", "--policy", "old.yaml"],
        "permgate diff: nowhere.yaml: cannot read the endpoint map",
    ),
    "an invalid new map names file and line": (
        ["--map", "map.yaml", "--to-map", "broken.yaml", "--policy", "old.yaml"],
        "permgate diff: broken.yaml:3: ",
    ),
    "a policy that names an unknown role": (
        ["--map", "map.yaml", "--to-map", "map.yaml", "--policy", "old.yaml",
         "--to-policy", "unknown-role.yaml"],
        "permgate diff: unknown-role.yaml:",
    ),
    "a policy that is not YAML": (
        ["--map", "map.yaml", "--to-map", "map.yaml", "--policy", "garbled.yaml"],
        "permgate diff: garbled.yaml:2: YAML syntax error",
    ),
    "a store file that does not exist": (
        ["--map", "map.yaml", "--to-map", "map.yaml", "--store", "sqlite:///nonexistent/p.db"],
        "permgate diff: store 'sqlite:///nonexistent/p.db': no such file",
    ),
    "--prune between two policy files": (
        ["--map", "map.yaml", "--policy", "old.yaml", "--to-policy", "old.yaml", "--prune"],
        "permgate diff: --prune applies to --to-policy with the live store",
    ),
    "a markdown row limit below one": (
        ["--map", "map.yaml", "--policy", "old.yaml", "--markdown", "--max-rows", "0"],
        "permgate diff: --max-rows 0: must be at least 1",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("args", "message"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_clear_line(files: Path, args: list[str], message: str) -> None:
    """Bad input: exit 2, nothing on stdout, one line on stderr per problem, naming it."""
    (files / "broken.yaml").write_text(
        "version: 1\nendpoints:\n  - {id: x, method: GET, path: /x, permissions: [x]}\n",
        encoding="utf-8",
    )
    (files / "unknown-role.yaml").write_text(
        edited(BASE_POLICY, ("roles: [admin]", "roles: [no-such-role]")), encoding="utf-8"
    )
    (files / "garbled.yaml").write_text("accounts: [\n", encoding="utf-8")
    result = permgate("diff", *args, cwd=files)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr


def apply(store: str, policy: str, cwd: Path) -> None:
    """``permgate apply POLICY --store STORE``, which must succeed."""
    result = permgate("apply", policy, "--store", store, cwd=cwd)
    assert result.returncode == 0, result.stderr


def test_live_store_is_the_old_side_of_a_policy_change(files: Path) -> None:
    """Without --policy the old side is the store and the new side is the store as
    applying the new policy would leave it; the store itself is not changed."""
    store = f"sqlite://{files / 'live.db'}"
    apply(store, "old.yaml", files)
    args = ["diff", "--store", store, "--map", "map.yaml", "--to-map", "map.yaml"]
    result = permgate(*args, "--to-policy", "new.yaml", cwd=files)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[:-1] == EXPECTED_GAINS
    unchanged = permgate(*args, cwd=files)
    assert (unchanged.returncode, unchanged.stdout) == (0, "no access changes\n")


def test_live_store_keeps_what_the_new_policy_does_not_name(files: Path) -> None:
    """Applying without --prune leaves principals the file omits: they change nothing."""
    store = f"sqlite://{files / 'live.db'}"
    apply(store, "old.yaml", files)
    (files / "only-alice.yaml").write_text(
        edited(
            BASE_POLICY,
            (
                "      - id: bob\n        roles: [agent]\n"
                "        tenants: [acme-prod, acme-test]\n",
                "",
            ),
            ("      - id: root\n        roles: [admin]\n", ""),
            (AGENT_GRANTS, AGENT_ISSUES),
        ),
        encoding="utf-8",
    )
    result = permgate(
        "diff", "--store", store, "--map", "map.yaml", "--to-map", "map.yaml",
        "--to-policy", "only-alice.yaml", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[:-1] == EXPECTED_GAINS


def test_configured_map_and_store_fill_the_sides_not_given(files: Path) -> None:
    """With only --to-map, the old map is the config's and the model is the live store."""
    store = files / "live.db"
    apply(f"sqlite://{store}", "old.yaml", files)
    (files / "permgate.yaml").write_text(
        f"endpoint_map: map.yaml\nstore: sqlite://{store}\n", encoding="utf-8"
    )
    result = permgate("diff", "--config", "permgate.yaml", "--to-map", "strict-map.yaml", cwd=files)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[-1] == "0 gained, 3 lost (2 principals, 1 endpoint)"


@pytest.mark.postgres
async def test_live_postgresql_store_is_the_old_side(files: Path, pg_dsn: str) -> None:
    """The same policy diff against a live PostgreSQL store."""
    apply(pg_dsn, "old.yaml", files)
    result = permgate(
        "diff", "--store", pg_dsn, "--map", "map.yaml", "--to-map", "map.yaml",
        "--to-policy", "new.yaml", "--json", cwd=files,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    gained = json.loads(result.stdout)["gained"]
    assert [(g["principal"], g["tenant"]) for g in gained] == [
        ("alice", "acme-prod"),
        ("bob", "acme-prod"),
        ("bob", "acme-test"),
    ]


def test_shipped_map_against_itself_changes_nothing(files: Path) -> None:
    """The repository's own map and example policy: a no-op diff exits 0."""
    root = Path(__file__).resolve().parents[2]
    result = permgate(
        "diff", "--map", str(root / "endpoint_map.yaml"),
        "--to-map", str(root / "endpoint_map.yaml"),
        "--policy", str(root / "examples" / "policy.yaml"), cwd=files,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "no access changes\n")


def test_prune_drops_what_the_new_policy_does_not_name(files: Path) -> None:
    """--prune: the new side is the store as apply --prune would leave it, so the
    principals the file omits lose everything."""
    store = f"sqlite://{files / 'live.db'}"
    apply(store, "old.yaml", files)
    (files / "without-bob.yaml").write_text(
        edited(
            BASE_POLICY,
            (
                "      - id: bob\n        roles: [agent]\n"
                "        tenants: [acme-prod, acme-test]\n",
                "",
            ),
        ),
        encoding="utf-8",
    )
    args = ["diff", "--store", store, "--map", "map.yaml", "--to-map", "map.yaml"]
    kept = permgate(*args, "--to-policy", "without-bob.yaml", cwd=files)
    assert (kept.returncode, kept.stdout) == (0, "no access changes\n")
    pruned = permgate(*args, "--to-policy", "without-bob.yaml", "--prune", cwd=files)
    assert pruned.returncode == 1, pruned.stderr
    assert pruned.stdout.splitlines()[:-1] == [
        "- bob acme-prod quotes.create (POST /policy/{tenantLocator}/quotes)",
        "- bob acme-test quotes.create (POST /policy/{tenantLocator}/quotes)",
        "- bob acme-prod quotes.get (GET /policy/{tenantLocator}/quotes/{locator})",
        "- bob acme-test quotes.get (GET /policy/{tenantLocator}/quotes/{locator})",
    ]


def test_prune_refuses_a_role_the_new_policy_still_assigns(files: Path) -> None:
    """--prune checks as apply --prune does: a pruned role still held is bad input."""
    store = f"sqlite://{files / 'live.db'}"
    apply(store, "old.yaml", files)
    (files / "no-agent.yaml").write_text(
        edited(
            BASE_POLICY,
            ("      - name: agent\n        permissions: [quotes.read, quotes.write]\n", ""),
        ),
        encoding="utf-8",
    )
    result = permgate(
        "diff", "--store", store, "--map", "map.yaml", "--to-map", "map.yaml",
        "--to-policy", "no-agent.yaml", "--prune", cwd=files,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert "--prune would delete role 'agent'" in result.stderr
