"""``permgate lint``: one crafted policy per rule and its negative, then the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from permgate.manage.policy_file import parse_policy
from permgate.maps.loader import parse_map
from permgate.review.lint import lint_roles, roles_from_policy

LINT_MAP = """\
version: 1
defaults:
  tenant: {path_param: tenantLocator}
endpoints:
  - id: payments.get
    method: GET
    path: /billing/{tenantLocator}/payments/{locator}
    permissions: [payments.read, invoices.read]
  - id: invoices.get
    method: GET
    path: /billing/{tenantLocator}/invoices/{locator}
    permissions: [invoices.read]
  - id: reports.get
    method: GET
    path: /reports/{tenantLocator}/{locator}
    permissions: [reports.read, audit.read]
  - id: quotes.get
    method: GET
    path: /policy/{tenantLocator}/quotes/{locator}
    permissions: [quotes.read]
  - id: quotes.create
    method: POST
    path: /policy/{tenantLocator}/quotes
    any_of: [quotes.write, quotes.create]
  - id: status
    method: GET
    path: /status
    public: true
"""


def policy_with(*roles: str) -> str:
    """A one-account policy defining ``roles`` (each ``name: [grants]``)."""
    lines = ["accounts:", "  - id: acme", "    roles:"]
    for role in roles:
        name, grants = role.split(": ", 1)
        lines.append(f"      - {{name: {name}, permissions: {grants}}}")
    return "\n".join(lines) + "\n"


def findings_of(*roles: str) -> set[tuple[str, str, str | None, tuple[str, ...]]]:
    """(rule, role, grant, roles) of every finding on a policy defining ``roles``."""
    policy = parse_policy(policy_with(*roles), "policy.yaml")
    found = lint_roles(roles_from_policy(policy), parse_map(LINT_MAP, "map.yaml"))
    return {(f.rule, f.role, f.grant, f.roles) for f in found}


RULE_CASES = {
    "needs_partner: payments without invoices unlocks nothing": (
        ["payer: [payments.read]"],
        {("needs_partner", "payer", "payments.read", ())},
    ),
    "needs_partner: not when the role holds the partner": (
        ["payer: [payments.read, invoices.read]"],
        set(),
    ),
    "needs_partner: a group grant whose every endpoint needs another group": (
        ["reporter: [reports.*]"],
        {("needs_partner", "reporter", "reports.*", ())},
    ),
    "needs_partner: not for one alternative of an any_of, which is enough alone": (
        ["creator: [quotes.create]"],
        set(),
    ),
    "unused_permission: a permission no endpoint requires": (
        ["typo: [quotes.read, quote.read]"],
        {("unused_permission", "typo", "quote.read", ())},
    ),
    "unused_permission: a group no endpoint requires": (
        ["typo: [quote.*, quotes.read]"],
        {("unused_permission", "typo", "quote.*", ())},
    ),
    "unused_permission: not for a required permission or its group": (
        ["reader: [quotes.read]", "writer: [quotes.*, invoices.read]"],
        set(),
    ),
    "unused_permission: a permission only a public entry lists is unused": (
        ["viewer: [status.read, quotes.read]"],
        {("unused_permission", "viewer", "status.read", ())},
    ),
    "identical_roles: two defined roles with the same grants name each other": (
        ["one: [quotes.read]", "two: [quotes.read]"],
        {
            ("identical_roles", "one", None, ("two",)),
            ("identical_roles", "two", None, ("one",)),
        },
    ),
    "identical_roles: a grant another grant of the role covers changes nothing": (
        ["wide: [quotes.*]", "wider: [quotes.*, quotes.read]"],
        {
            ("identical_roles", "wide", None, ("wider",)),
            ("identical_roles", "wider", None, ("wide",)),
        },
    ),
    "identical_roles: not for different grants": (
        ["one: [quotes.read]", "two: [quotes.read, invoices.read]"],
        set(),
    ),
    "wildcard and identical to the built-in full-access (never to admin)": (
        ["everything: ['*.*']"],
        {
            ("wildcard", "everything", "*.*", ()),
            ("identical_roles", "everything", None, ("full-access",)),
        },
    ),
    "wildcard: not for a group wildcard": (
        ["quoter: [quotes.*]"],
        set(),
    ),
    "built-in roles the policy edits are never findings": (
        ["full-access: ['*.*']", "claims-only: [payments.read, nothing.read]"],
        set(),
    ),
}


@pytest.mark.parametrize(("roles", "expected"), list(RULE_CASES.values()), ids=list(RULE_CASES))
def test_lint_rule(
    roles: list[str], expected: set[tuple[str, str, str | None, tuple[str, ...]]]
) -> None:
    """Each crafted policy yields exactly its findings."""
    assert findings_of(*roles) == expected


def test_needs_partner_names_the_missing_partner() -> None:
    """The needs_partner message says which permission would make the grant useful."""
    policy = parse_policy(policy_with("payer: [payments.read]"), "policy.yaml")
    (finding,) = lint_roles(roles_from_policy(policy), parse_map(LINT_MAP, "map.yaml"))
    assert finding.where == "policy.yaml:4"
    assert "grant invoices.read too" in finding.message


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
def lint_dir(tmp_path: Path) -> Path:
    """The lint map, a policy with one finding per rule and a clean policy."""
    (tmp_path / "map.yaml").write_text(LINT_MAP, encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(
        policy_with(
            "payer: [payments.read]",
            "typo: [quote.read, quotes.read]",
            "reader: [invoices.read]",
            "copy: [invoices.read]",
            "everything: ['*.*']",
        ),
        encoding="utf-8",
    )
    (tmp_path / "clean.yaml").write_text(
        policy_with("payer: [payments.read, invoices.read]"), encoding="utf-8"
    )
    return tmp_path


def test_lint_prints_one_line_per_finding_and_exits_1(lint_dir: Path) -> None:
    """Text: ``FILE:LINE: rule: message`` per finding, then a count; exit 1."""
    result = permgate("lint", "bad.yaml", "--map", "map.yaml", cwd=lint_dir)
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    assert [line.split(": ")[:2] for line in out[:-1]] == [
        ["bad.yaml:4", "needs_partner"],
        ["bad.yaml:5", "unused_permission"],
        ["bad.yaml:6", "identical_roles"],
        ["bad.yaml:7", "identical_roles"],
        ["bad.yaml:8", "wildcard"],
        ["bad.yaml:8", "identical_roles"],
    ]
    assert out[-1] == "6 findings in 5 role(s)"


def test_lint_json_lists_findings_with_every_field(lint_dir: Path) -> None:
    """--json: one document; grant null for identical_roles, roles empty for the others."""
    result = permgate("lint", "bad.yaml", "--map", "map.yaml", "--json", cwd=lint_dir)
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert [(f["rule"], f["role"], f["grant"], f["roles"]) for f in findings] == [
        ("needs_partner", "payer", "payments.read", []),
        ("unused_permission", "typo", "quote.read", []),
        ("identical_roles", "reader", None, ["copy"]),
        ("identical_roles", "copy", None, ["reader"]),
        ("wildcard", "everything", "*.*", []),
        ("identical_roles", "everything", None, ["full-access"]),
    ]
    assert {f["account"] for f in findings} == {"acme"}


def test_lint_clean_policy_exits_0(lint_dir: Path) -> None:
    """No findings: exit 0 and a count of zero."""
    result = permgate("lint", "clean.yaml", "--map", "map.yaml", cwd=lint_dir)
    assert (result.returncode, result.stdout) == (0, "0 findings in 1 role(s)\n")


def test_lint_reads_the_live_store_without_a_policy(lint_dir: Path) -> None:
    """Without POLICY, the store's roles that are not built in are judged."""
    store = f"sqlite://{lint_dir / 'live.db'}"
    applied = permgate("apply", "bad.yaml", "--store", store, cwd=lint_dir)
    assert applied.returncode == 0, applied.stderr
    result = permgate("lint", "--store", store, "--map", "map.yaml", "--json", cwd=lint_dir)
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert {(f["rule"], f["role"]) for f in findings} == {
        ("needs_partner", "payer"),
        ("unused_permission", "typo"),
        ("identical_roles", "reader"),
        ("identical_roles", "copy"),
        ("wildcard", "everything"),
        ("identical_roles", "everything"),
    }
    assert {f["where"] for f in findings} == {"store: account acme"}


LINT_BAD_INPUTS = {
    "an invalid policy": (["garbled.yaml", "--map", "map.yaml"], "permgate lint: garbled.yaml:"),
    "a missing map": (["clean.yaml", "--map", "nowhere.yaml"], "permgate lint: nowhere.yaml:"),
    "a store file that does not exist": (
        ["--map", "map.yaml", "--store", "sqlite:///nonexistent/p.db"],
        "permgate lint: store 'sqlite:///nonexistent/p.db': no such file",
    ),
}


@pytest.mark.parametrize(
    ("args", "message"), list(LINT_BAD_INPUTS.values()), ids=list(LINT_BAD_INPUTS)
)
def test_lint_bad_input_exits_2(lint_dir: Path, args: list[str], message: str) -> None:
    """Bad input: exit 2, one line on stderr naming it, nothing on stdout."""
    (lint_dir / "garbled.yaml").write_text("accounts: [\n", encoding="utf-8")
    result = permgate("lint", *args, cwd=lint_dir)
    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr


def test_example_policy_is_clean_against_the_shipped_map() -> None:
    """The repository's example policy passes lint with the shipped map."""
    root = Path(__file__).resolve().parents[2]
    result = permgate("lint", "examples/policy.yaml", "--map", "endpoint_map.yaml", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
