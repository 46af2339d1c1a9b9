"""``permgate check-map`` and ``permgate import-openapi`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from permgate.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED_MAP = REPO / "endpoint_map.yaml"
SOCOTRA_SPEC = REPO / "spec" / "socotra-openapi.json"

BROKEN_MAP = """\
version: 1
endpoints:
  - id: a
    method: GET
    path: /a
    permissions: [quotes.*]
  - id: a
    method: GET
    path: /b/
    permissions: [quotes.read]
"""


@pytest.fixture
def broken_map(tmp_path: Path) -> Path:
    """A map with errors on lines 6, 7 and 9."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_MAP, encoding="utf-8")
    return path


@pytest.fixture
def drifted_map(tmp_path: Path) -> Path:
    """The shipped map with one permission changed and its first entry removed."""
    text = SHIPPED_MAP.read_text(encoding="utf-8")
    text = text.replace("permissions: [users.add]", "permissions: [users.write]", 1)
    start = text.index("  - id: fetchPasswordPolicy\n")
    end = text.index("  - id: ", start + 1)
    path = tmp_path / "drifted.yaml"
    path.write_text(text[:start] + text[end:], encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m permgate ARGS`` in the repository root, as CI would run it."""
    return subprocess.run(
        [sys.executable, "-m", "permgate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_map_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid map prints one summary line with the endpoint and permission counts."""
    assert main(["check-map", str(SHIPPED_MAP)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SHIPPED_MAP}: 722 endpoints, 257 permissions\n"
    assert err == ""


def test_check_map_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON document and nothing else."""
    assert main(["check-map", str(SHIPPED_MAP), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["valid"], document["endpoints"], document["permissions"]) == (True, 722, 257)
    assert len(document["sha256"]) == 64


def test_check_map_errors(broken_map: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every error is a FILE:LINE: line on stderr, then a count; exit 1, nothing on stdout."""
    assert main(["check-map", str(broken_map)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == ""
    assert [line.split(": ")[0] for line in lines[:-1]] == [
        f"{broken_map}:6",
        f"{broken_map}:7",
        f"{broken_map}:9",
    ]
    assert lines[-1] == f"{broken_map}: 3 errors"


def test_check_map_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file is one clear line and exit 1, not a traceback."""
    missing = tmp_path / "absent.yaml"
    assert main(["check-map", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{missing}: cannot read the endpoint map: No such file or directory" in err
    assert "Traceback" not in err


def test_check_map_accepts_common_options(capsys: pytest.CaptureFixture[str]) -> None:
    """--config and --store are accepted after the command words, like every command."""
    code = main(["check-map", str(SHIPPED_MAP), "--config", "none.yaml", "--store", "sqlite:///x"])
    assert code == 0
    assert "722 endpoints" in capsys.readouterr().out


def test_import_openapi_stdout_is_the_shipped_map(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o the map goes to stdout, identical to the shipped file."""
    assert main(["import-openapi", str(SOCOTRA_SPEC)]) == 0
    assert capsys.readouterr().out == SHIPPED_MAP.read_text(encoding="utf-8")


def test_import_openapi_writes_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-o writes a map that check-map accepts."""
    target = tmp_path / "map.yaml"
    assert main(["import-openapi", str(SOCOTRA_SPEC), "-o", str(target)]) == 0
    assert capsys.readouterr().out == f"{target}: wrote 722 endpoints from {SOCOTRA_SPEC}\n"
    assert target.read_bytes() == SHIPPED_MAP.read_bytes()


def test_import_openapi_spec_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spec the map cannot express prints each problem on stderr and exits 1."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"openapi": "3.0.1", "paths": {"/a": {"get": {}}}}))
    target = tmp_path / "map.yaml"
    assert main(["import-openapi", str(spec), "-o", str(target)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{spec}: GET /a: operationId is missing (it becomes the map entry's id)\n"
    assert not target.exists()


def test_import_openapi_check_in_sync(capsys: pytest.CaptureFixture[str]) -> None:
    """--check on the shipped map says it is in sync and exits 0."""
    assert main(["import-openapi", str(SOCOTRA_SPEC), "--check", str(SHIPPED_MAP)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{SHIPPED_MAP}: in sync with {SOCOTRA_SPEC} (722 operations)"]


def test_import_openapi_check_drift(drifted_map: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check on a modified copy lists each difference and exits 1."""
    assert main(["import-openapi", str(SOCOTRA_SPEC), "--check", str(drifted_map)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{drifted_map}: missing from the map: fetchPasswordPolicy "
        "(GET /auth/identity/passwordPolicy)",
        f"{drifted_map}: differs: createUser: permissions is [users.write] in the map, "
        "[users.add] in the spec",
    ]
    assert err == f"{drifted_map}: 2 differences from {SOCOTRA_SPEC}\n"


@pytest.mark.slow
def test_subprocess_check_map_valid() -> None:
    """The real command on the shipped map: exit 0 and the one summary line."""
    done = run_cli("check-map", "endpoint_map.yaml")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "endpoint_map.yaml: 722 endpoints, 257 permissions\n",
        "",
    )


@pytest.mark.slow
def test_subprocess_check_map_errors(broken_map: Path) -> None:
    """The real command on a broken map: exit 1, FILE:LINE lines, no traceback."""
    done = run_cli("check-map", str(broken_map))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert f"{broken_map}:6: endpoint 'a': permissions: permission 'quotes.*'" in done.stderr
    assert f"{broken_map}:9: endpoint 'a': path '/b/' has an empty segment" in done.stderr


@pytest.mark.slow
def test_subprocess_import_openapi_check(drifted_map: Path) -> None:
    """The real --check command: 0 on the shipped map, 1 with a diff on a modified copy."""
    spec = "spec/socotra-openapi.json"
    in_sync = run_cli("import-openapi", spec, "--check", "endpoint_map.yaml")
    assert in_sync.returncode == 0, in_sync.stderr
    assert "in sync" in in_sync.stdout
    drifted = run_cli("import-openapi", spec, "--check", str(drifted_map))
    assert drifted.returncode == 1
    assert "missing from the map: fetchPasswordPolicy" in drifted.stdout
    assert "Traceback" not in drifted.stderr


def test_import_openapi_unwritable_output_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o into a folder that does not exist: one line naming the file, no traceback."""
    target = tmp_path / "missing" / "map.yaml"
    assert main(["import-openapi", str(SOCOTRA_SPEC), "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"{target}: cannot write the map" in err
