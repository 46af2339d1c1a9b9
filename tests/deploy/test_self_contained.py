"""The repository stands on its own: a user's clone is all there is.

Nothing tracked may point at files a user does not have (a design folder beside the
checkout, its section numbers, the numbered source notes, the tracker's issue
numbers): such a pointer is a rule the reader cannot look up. And a fresh clone with
nothing beside it must regenerate and check the shipped endpoint map from its own
``spec/`` folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"

# Each pattern is written so that this file does not match it itself.
FOREIGN_REFERENCES: list[tuple[str, re.Pattern[str]]] = [
    ("a path into a folder beside the checkout", re.compile(r"\.\./shared\b")),
    ("the design document", re.compile(r"\bDESIGN(?:\.md\b|\s*§)")),
    ("another document of the design folder", re.compile(r"\b(?:PERF|TOOLING|STYLE)\.md\b")),
    ("a section number of a document the user lacks", re.compile(r"§\s*\d")),
    ("a numbered source note", re.compile(r"\b[Ss]eeds?\s+0\d\d\b")),
    ("a tracker issue number", re.compile(r"\b[Ii]ssues?\s+#?\d+\b")),
]
# A section sign is fine where it cites a public standard: "RFC 9110 §9.2.2".
STANDARD_SECTION = re.compile(r"\bRFC\s*\d+\s*$")


def foreign_references(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, line) for each line of ``text`` holding a reference a user
    cannot follow; ``what`` names the first kind found on that line."""
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        what = next((what for what, pattern in FOREIGN_REFERENCES if _cites(pattern, line)), None)
        if what is not None:
            found.append((number, what, line.strip()))
    return found


def _cites(pattern: re.Pattern[str], line: str) -> bool:
    for hit in pattern.finditer(line):
        if hit.group().startswith("§") and STANDARD_SECTION.search(line[: hit.start()]):
            continue
        return True
    return False


def tracked_files() -> list[Path]:
    """Every file git tracks in this checkout (the index, so new files count once added)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
    )
    return [REPO / name for name in listed.stdout.decode().split("\0") if name]


def require_git_checkout() -> None:
    """Skip outside a git checkout (an sdist, say), but never in CI, where it is one."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        message = f"{REPO} is not a git checkout (or git is not installed)"
        if IN_CI:
            pytest.fail(f"{message}: CI runs on a clone, so this must not happen there")
        pytest.skip(message)


# Planted lines spell their key character as an escape (\u002f is "/", \u00a7 is "§",
# \u0020 a space), so that the scan of this very file does not find them.
PLANTED = [
    ("beside-path", "spec = '..\u002fshared/reference/api.json'", "a path into a folder"),
    ("design-section", "# the order of DESIGN \u00a71.3", "the design document"),
    ("design-file", "see DESIGN\u002emd for the contract", "the design document"),
    ("perf-file", '"""Targets from PERF\u002emd."""', "another document"),
    ("bare-section", "the admin-only rules of \u00a71.4", "a section number"),
    ("seed-number", 'raise ValueError("only group.* (seed\u0020003)")', "a numbered source note"),
    ("seeds-numbers", "# seeds\u0020003 and 004", "a numbered source note"),
    ("issue-number", "The gateway end to end (issue\u00204).", "a tracker issue number"),
]
CLEAN = [
    ("rfc-section", "# a retry is safe (RFC 9110 §9.2.2, minus TRACE)"),
    ("seeded-store", '"""A gateway on a seeded SQLite store."""'),
    ("seed-function", "from harness import seed"),
    ("design-word", "the design of the trie keeps a match flat in map size"),
    ("relative-path", "map: ../endpoint_map.yaml   # relative to the suite file"),
    ("spec-folder", "permgate import-openapi spec/socotra-openapi.json -o endpoint_map.yaml"),
]


@pytest.mark.parametrize(("line", "what"), [p[1:] for p in PLANTED], ids=[p[0] for p in PLANTED])
def test_check_catches_a_planted_reference(line: str, what: str) -> None:
    """Each kind of reference a user cannot follow is found, on its line, and named."""
    text = f"first line\n{line}\nlast line\n"
    found = foreign_references(text)
    assert [(number, kind.startswith(what)) for number, kind, _ in found] == [(2, True)]


@pytest.mark.parametrize("line", [c[1] for c in CLEAN], ids=[c[0] for c in CLEAN])
def test_check_leaves_ordinary_text_alone(line: str) -> None:
    """Standards' sections, seeded stores and relative paths inside the repo are fine."""
    assert foreign_references(line) == []


def test_no_tracked_file_refers_to_what_a_user_does_not_have() -> None:
    """No tracked file cites the design folder, its sections, seed or issue numbers."""
    require_git_checkout()
    problems: list[str] = []
    for path in tracked_files():
        if not path.is_file():
            continue  # deleted in the working tree but still in the index
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, what, line in foreign_references(text):
            problems.append(f"{path.relative_to(REPO)}:{number}: {what}: {line}")
    assert problems == [], "say the rule in words instead:\n" + "\n".join(problems)


def clone_alone(destination: Path) -> Path:
    """``git clone`` of this repository's committed HEAD into an otherwise empty folder."""
    clone = destination / "permgate"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert sorted(p.name for p in destination.iterdir()) == ["permgate"]
    return clone


@pytest.mark.slow
def test_fresh_clone_regenerates_the_shipped_map(tmp_path: Path) -> None:
    """A clone with nothing beside it passes the import and regeneration tests, running
    its own code (PYTHONPATH is the clone's src) with this interpreter."""
    require_git_checkout()
    clone = clone_alone(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(clone / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    which = subprocess.run(
        [sys.executable, "-c", "import permgate; print(permgate.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(which.stdout.strip()).is_relative_to(clone / "src"), which.stdout

    tests = ["tests/maps/test_openapi_import.py", "tests/cli/test_cli_map.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert " passed" in run.stdout and "skipped" not in run.stdout, report
