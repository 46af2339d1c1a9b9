"""The store commands end to end (apply, bootstrap, tokens, explain, test) on both
backends, through ``permgate.cli.main`` as a user runs them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from permgate.cli import main

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
            permissions: [policy.create, quote.*]
        principals:
          - id: alice
            roles: [sales-agent]
            tenants: [acme-prod]
    """
)
MAP = textwrap.dedent(
    """\
    version: 1
    defaults:
      tenant: {path_param: tenantLocator}
    endpoints:
      - id: quotes.create
        method: POST
        path: /policy/{tenantLocator}/quotes
        permissions: [quote.create]
      - id: claims.write
        method: POST
        path: /claims/{tenantLocator}
        permissions: [claims.write]
    """
)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A policy, a map and an empty config in a temporary directory."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "map.yaml").write_text(MAP)
    (tmp_path / "permgate.yaml").write_text("audit: {sink: stdout}\n")
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _common(files: Path, dsn: str) -> list[str]:
    return ["--config", str(files / "permgate.yaml"), "--store", dsn]


def test_apply_twice_then_no_changes(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """apply prints each change, and a second apply prints 'no changes'."""
    code, out, err = _run(capsys, "apply", str(files / "policy.yaml"), *_common(files, store_dsn))
    assert code == 0, err
    assert "+ tenant acme-prod (PRODUCTION, enforce)" in out
    assert '"actor":"cli"' in err  # audit goes to stderr, never stdout
    code, out, _ = _run(capsys, "apply", str(files / "policy.yaml"), *_common(files, store_dsn))
    assert (code, out) == (0, "no changes\n")


def test_invalid_policy_changes_nothing(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid file exits 1 with FILE:LINE errors and writes nothing."""
    bad = files / "bad.yaml"
    bad.write_text(POLICY.replace("quote.*]", "quote.]").replace("[sales-agent]", "[nobody]"))
    code, _, err = _run(capsys, "apply", str(bad), *_common(files, store_dsn))
    assert code == 1
    assert f"{bad}:9: grant 'quote.'" in err
    code, out, _ = _run(capsys, "tokens", "list", "--owner", "alice", *_common(files, store_dsn))
    assert code == 2 and out == ""


def test_bootstrap_json_and_token_lifecycle(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """bootstrap prints an admin token; tokens create/list/revoke manage tokens."""
    common = _common(files, store_dsn)
    code, out, _ = _run(capsys, "bootstrap", "--account", "acme", "--json", *common)
    assert code == 0
    boot = json.loads(out)
    assert set(boot) == {"principal", "token_id", "secret"} and boot["principal"] == "admin"
    code, out, _ = _run(
        capsys,
        "tokens",
        "create",
        "--owner",
        "admin",
        "--name",
        "ci",
        "--permission",
        "quote.fetch",
        "--tenant",
        "any",
        "--expires-in",
        "60",
        "--json",
        *common,
    )
    assert code == 0
    created = json.loads(out)
    assert created["permissions"] == ["quote.fetch"] and created["expires_at"]
    code, out, _ = _run(capsys, "tokens", "list", "--owner", "admin", "--json", *common)
    assert {row["id"] for row in json.loads(out)} == {boot["token_id"], created["id"]}
    code, out, _ = _run(capsys, "tokens", "revoke", created["id"], *common)
    assert (code, out) == (0, f"revoked {created['id']}\n")


def test_token_wider_than_owner_names_the_excess(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """tokens create refuses a token exceeding its owner, naming what exceeds."""
    common = _common(files, store_dsn)
    assert _run(capsys, "apply", str(files / "policy.yaml"), *common)[0] == 0
    code, out, err = _run(
        capsys,
        "tokens",
        "create",
        "--owner",
        "alice",
        "--name",
        "x",
        "--permission",
        "claims.write",
        "--tenant",
        "acme-test",
        *common,
    )
    assert code == 2 and out == ""
    assert "claims.write" in err and "acme-test" in err and "Traceback" not in err


def test_revoke_unknown_token_fails_clearly(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Revoking an unknown token exits non-zero with a one-line message."""
    code, _, err = _run(capsys, "tokens", "revoke", "nope", *_common(files, store_dsn))
    assert code == 2 and "token 'nope' not found" in err


def test_explain_gives_the_decision_with_reasons(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """explain --json prints decision, reason, endpoint, tenant, required and missing."""
    common = _common(files, store_dsn)
    assert _run(capsys, "apply", str(files / "policy.yaml"), *common)[0] == 0
    map_arg = ["--map", str(files / "map.yaml")]
    code, out, _ = _run(
        capsys,
        "explain",
        "--principal",
        "alice",
        "POST",
        "/claims/acme-prod",
        "--json",
        *map_arg,
        *common,
    )
    assert code == 0
    result = json.loads(out)
    assert result["decision"] == "deny" and result["reason"] == "missing_permission"
    assert result["missing_permissions"] == ["claims.write"]
    assert result["endpoint"] == "claims.write" and result["tenant"] == "acme-prod"
    _, out, _ = _run(
        capsys,
        "explain",
        "--principal",
        "alice",
        "POST",
        "/policy/acme-prod/quotes",
        "--json",
        *map_arg,
        *common,
    )
    assert json.loads(out)["decision"] == "allow"


def test_unreachable_store_names_the_file(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unopenable store exits non-zero naming the file, without a traceback."""
    dsn = f"sqlite://{files / 'no-such-dir' / 'x.db'}"
    code, _, err = _run(capsys, "apply", str(files / "policy.yaml"), *_common(files, dsn))
    assert code == 2 and "no-such-dir/x.db" in err and "Traceback" not in err


SUITE = textwrap.dedent(
    """\
    map: map.yaml
    policy: policy.yaml
    cases:
      - name: agents quote
        principal: alice
        method: POST
        path: /policy/acme-prod/quotes
        expect: allow
      - name: no claims
        token: {owner: alice, permissions: [quote.create], tenants: [acme-prod]}
        method: POST
        path: /claims/acme-prod
        expect: deny
        reason: missing_permission
    """
)


def test_suite_passes(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """permgate test exits 0 when every case matches."""
    (files / "suite.yaml").write_text(SUITE)
    code, out, _ = _run(capsys, "test", str(files / "suite.yaml"))
    assert (code, out) == (0, "2 cases, 0 failed\n")


def test_suite_mismatch_prints_reasons(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mismatch exits 1 and prints the decision's reason, required and missing."""
    (files / "suite.yaml").write_text(SUITE.replace("expect: deny", "expect: allow"))
    code, out, _ = _run(capsys, "test", str(files / "suite.yaml"))
    assert code == 1
    assert "suite.yaml:9: case 'no claims': expected allow (missing_permission), got deny" in out
    assert "required [claims.write]; missing [claims.write]" in out


def test_suite_with_inline_policy_reports_its_lines(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inline policy's errors name lines of the suite file."""
    inline = "map: map.yaml\npolicy:\n  accounts:\n    - id: acme\n      bogus: 1\ncases: []\n"
    (files / "suite.yaml").write_text(inline)
    code, _, err = _run(capsys, "test", str(files / "suite.yaml"))
    assert code == 1 and "suite.yaml:5: policy.accounts[0].bogus: unknown key" in err


def test_absurd_token_lifetime_is_refused_clearly(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--expires-in beyond ten years is a one-line error, not an overflow traceback."""
    common = _common(files, store_dsn)
    assert _run(capsys, "apply", str(files / "policy.yaml"), *common)[0] == 0
    code, out, err = _run(
        capsys, "tokens", "create", "--owner", "alice", "--name", "x",
        "--permission", "quote.create", "--tenant", "acme-prod",
        "--expires-in", "99999999999999", *common,
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "expires_in" in err and "Traceback" not in err


def test_token_list_shows_expired_tokens_as_expired(
    files: Path, store_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token past its expiry is listed as expired, not active."""
    import time

    common = _common(files, store_dsn)
    assert _run(capsys, "apply", str(files / "policy.yaml"), *common)[0] == 0
    code, _, _ = _run(
        capsys, "tokens", "create", "--owner", "alice", "--name", "short",
        "--permission", "quote.create", "--tenant", "acme-prod", "--expires-in", "1", *common,
    )  # fmt: skip
    assert code == 0
    time.sleep(1.1)
    code, out, _ = _run(capsys, "tokens", "list", "--owner", "alice", *common)
    assert code == 0 and " expired " in out
