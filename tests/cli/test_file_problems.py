"""The same mistake reads the same in every file permgate reads.

An unknown key, a repeated key and a value of the wrong type in the endpoint map, the
policy file, a ``permgate test`` suite and ``permgate.yaml`` are each reported as
``FILE:LINE: WHERE: WHAT`` by the one YAML reader, and several problems of one file
are reported together, in line order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from permgate.cli import main
from permgate.config import load_settings
from permgate.core.errors import ProblemList
from permgate.manage.policy_file import load_policy
from permgate.maps.loader import load_map

MAP = """\
version: 1
endpoints:
  - id: a
    method: GET
    path: /a
    tenant: none
    permissions: []
"""
POLICY = """\
accounts:
  - id: acme
    principals:
      - id: alice
        kind: user
"""
SUITE = """\
map: map.yaml
policy: policy.yaml
cases:
  - principal: alice
    method: GET
    path: /a
    expect: allow
"""
CONFIG = """\
listen: 127.0.0.1:8080
auth:
  token_prefix: pgt_
"""

Problems = Callable[[Path, pytest.CaptureFixture[str]], list[str]]


def _raised(read: Callable[[Path], object]) -> Problems:
    def problems(path: Path, _capsys: pytest.CaptureFixture[str]) -> list[str]:
        with pytest.raises(ProblemList) as caught:
            read(path)
        return caught.value.errors

    return problems


def _suite_problems(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What ``permgate test`` prints on stderr (it must exit 1, with no traceback)."""
    (path.parent / "map.yaml").write_text(MAP, encoding="utf-8")
    (path.parent / "policy.yaml").write_text(POLICY, encoding="utf-8")
    assert main(["test", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()


# Each file kind: its valid text, how its problems are read, and the lines that make
# the three mistakes (appended to the text's last mapping) with the WHERE and WHAT
# each must produce.
KINDS: dict[str, tuple[str, Problems, list[tuple[str, str, str]]]] = {
    "map": (
        MAP,
        _raised(load_map),
        [
            ("    requires: [x.y]", "endpoints[0].requires", "unknown key (allowed: id, "),
            ("    path: /b", "endpoints[0].path", "repeated key (first on line 5)"),
            (
                "    public: maybe",
                "endpoints[0].public",
                "expected true or false, got a string ('maybe')",
            ),
        ],
    ),
    "policy": (
        POLICY,
        _raised(load_policy),
        [
            ("        knd: user", "accounts[0].principals[0].knd", "unknown key (allowed: id, "),
            (
                "        kind: client",
                "accounts[0].principals[0].kind",
                "repeated key (first on line 5)",
            ),
            (
                "        disabled: maybe",
                "accounts[0].principals[0].disabled",
                "expected true or false, got a string ('maybe')",
            ),
        ],
    ),
    "suite": (
        SUITE,
        _suite_problems,
        [
            ("    expected: deny", "cases[0].expected", "unknown key (allowed: name, "),
            ("    method: POST", "cases[0].method", "repeated key (first on line 5)"),
            ("    headers: nope", "cases[0].headers", "expected a mapping, got a string ('nope')"),
        ],
    ),
    "config": (
        CONFIG,
        _raised(lambda path: load_settings(path, env={})),
        [
            ("  prefix: x", "auth.prefix", "unknown key (allowed: "),
            ("  token_prefix: abc_", "auth.token_prefix", "repeated key (first on line 3)"),
            (
                "  forward_credential: maybe",
                "auth.forward_credential",
                "expected true or false, got a string ('maybe')",
            ),
        ],
    ),
}
MISTAKES = ["unknown-key", "repeated-key", "wrong-type"]


@pytest.mark.parametrize("mistake", range(3), ids=MISTAKES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_one_mistake_reads_the_same_in_every_file(
    kind: str, mistake: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mistake is one problem: FILE:LINE: WHERE: WHAT, on the line that has it."""
    text, problems_of, mistakes = KINDS[kind]
    added, where, what = mistakes[mistake]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text + added + "\n", encoding="utf-8")
    line = text.count("\n") + 1
    (problem,) = problems_of(path, capsys)
    assert problem.startswith(f"{path}:{line}: {where}: {what}"), problem


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_problem_of_a_file_is_reported_at_once(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The three mistakes in one file are three problems, in line order."""
    text, problems_of, mistakes = KINDS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text + "".join(added + "\n" for added, _, _ in mistakes), encoding="utf-8")
    first = text.count("\n") + 1
    found = problems_of(path, capsys)
    assert [re.sub(r"^.*?:(\d+): ([^:]+): .*$", r"\1 \2", p) for p in found] == [
        f"{first + index} {where}" for index, (_, where, _) in enumerate(mistakes)
    ]
