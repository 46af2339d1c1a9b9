"""The CI example runs as written: ``examples/ci/review.sh`` on a real git repository
holding the repository's own map, policy and decision suite, with two commits."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REVIEW = ROOT / "examples" / "ci" / "review.sh"
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"


def git(repo: Path, *args: str) -> None:
    """Run git in ``repo`` as a throwaway identity."""
    subprocess.run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose base commit (origin/main) holds the shipped map, the
    example policy and suite, and whose second commit narrows the sales agents'
    auxdata.* to reading."""
    repo = tmp_path / "platform"
    repo.mkdir()
    (repo / "endpoint_map.yaml").write_bytes((ROOT / "endpoint_map.yaml").read_bytes())
    (repo / "policy.yaml").write_bytes((ROOT / "examples" / "policy.yaml").read_bytes())
    suite = (ROOT / "examples" / "decisions.yaml").read_text(encoding="utf-8")
    suite = suite.replace("map: ../endpoint_map.yaml", "map: endpoint_map.yaml")
    (repo / "decisions.yaml").write_text(suite, encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    policy = (repo / "policy.yaml").read_text(encoding="utf-8")
    assert policy.count("auxdata.*") == 1
    (repo / "policy.yaml").write_text(
        policy.replace("auxdata.*", "auxdata.read, auxdata.list"), encoding="utf-8"
    )
    git(repo, "commit", "-q", "-am", "sales agents only read auxdata")
    return repo


def review(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``sh examples/ci/review.sh ARGS`` in ``repo``, with this interpreter's permgate."""
    return subprocess.run(
        ["sh", str(REVIEW), *args],
        cwd=repo,
        env={
            **os.environ,
            "PERMGATE": f"{shlex.quote(sys.executable)} -m permgate",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_review_runs_every_check_and_reports_the_access_lost(repo: Path) -> None:
    """All four steps run; the checks pass (exit 0) and the markdown report lists what
    alice loses on both her tenants, and nothing gained."""
    result = review(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("check-map endpoint_map.yaml", "lint policy.yaml", "test decisions.yaml", "diff"):
        assert f"== permgate {step}" in result.stdout
    report = (repo / "permgate-review.md").read_text(encoding="utf-8")
    assert report.startswith("### permgate diff: 0 gained, ")
    assert (
        "| **−** | alice | acme-prod, acme-test | `putAuxData` "
        "| `PUT /auxdata/{tenantLocator}/auxdata/{locator}` |" in report
    )
    assert "**+**" not in report
    assert report in result.stdout


def test_review_fails_on_access_change_when_asked(repo: Path) -> None:
    """PERMGATE_FAIL_ON_ACCESS_CHANGE=1 turns a reported change into a failed check."""
    result = review(repo, PERMGATE_FAIL_ON_ACCESS_CHANGE="1")
    assert result.returncode == 1, result.stdout + result.stderr


def test_review_fails_on_lint_findings(repo: Path) -> None:
    """A role granting ``*.*`` is a lint finding, and the review fails."""
    text = (repo / "policy.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "    roles:                      # admin",
        "    roles:\n      - {name: root-ish, permissions: ['*.*']}\n    # admin",
        1,
    )
    (repo / "policy.yaml").write_text(text, encoding="utf-8")
    result = review(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ": wildcard: role 'root-ish'" in result.stdout


def test_review_with_an_unknown_base_exits_2(repo: Path) -> None:
    """A base ref that does not exist is a usage problem: exit 2, saying which."""
    result = review(repo, "origin/nope")
    assert result.returncode == 2
    assert "base ref origin/nope not found" in result.stderr


def test_review_without_changes_reports_none(repo: Path) -> None:
    """Against its own HEAD, the report says nothing changes."""
    result = review(repo, "HEAD")
    assert result.returncode == 0, result.stdout + result.stderr
    report = (repo / "permgate-review.md").read_text(encoding="utf-8")
    assert report.startswith("### permgate diff: no access changes")


def test_workflow_runs_the_review_script_on_pull_requests() -> None:
    """The GitHub Actions example is valid YAML, runs on pull requests with the full
    history, runs the review script against the base branch and posts the report."""
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert "pull_request" in workflow[True]  # YAML reads the key `on` as true
    steps = workflow["jobs"]["review"]["steps"]
    assert steps[0]["with"]["fetch-depth"] == 0
    runs = "\n".join(step.get("run", "") for step in steps)
    assert 'review.sh "origin/${{ github.base_ref }}"' in runs
    assert "gh pr comment" in runs
