"""The README's examples work as written: the policy applies (twice, idempotently)
and the decision suite passes against the shipped map."""

from __future__ import annotations

from pathlib import Path

import pytest

from permgate.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_example_decision_suite_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """`permgate test examples/decisions.yaml` exits 0 with no failure."""
    assert main(["test", str(ROOT / "examples" / "decisions.yaml")]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_example_policy_applies_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Applying the example policy twice changes nothing the second time."""
    store = f"sqlite://{tmp_path}/p.db"
    policy = str(ROOT / "examples" / "policy.yaml")
    assert main(["apply", policy, "--store", store]) == 0
    assert "+ principal alice" in capsys.readouterr().out
    assert main(["apply", policy, "--store", store]) == 0
    assert capsys.readouterr().out.strip() == "no changes"
