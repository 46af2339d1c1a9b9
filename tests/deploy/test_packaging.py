"""What `pip install permgate` gives a user: the wheel's contents, the shipped map inside
the package, `permgate --version`, and the demo run from an installed wheel.

The wheel tests build the wheel from a copy of what the build reads (pyproject.toml,
README.md, src/), exactly as the Dockerfile does, so a stale build/ folder in the
work tree can never hide a file missing from the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from demo_client import EXPECTED_OUTCOMES, running_demo, try_printed_lines

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "permgate"
ROOT_MAP = ROOT / "endpoint_map.yaml"
PACKAGED_MAP = PACKAGE / "data" / "endpoint_map.yaml"
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Package data the installed permgate reads at run time, as paths inside the wheel.
PACKAGE_DATA = [
    "permgate/py.typed",
    "permgate/data/endpoint_map.yaml",
    *(f"permgate/admin/{p.name}" for p in sorted((PACKAGE / "admin").glob("*.yaml"))),
]


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without PERMGATE_* variables (they would add warnings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}
    return {**env, **extra}


def test_packaged_map_is_byte_identical_to_the_root_map() -> None:
    """The map inside the package is the repository's endpoint_map.yaml, byte for byte."""
    assert PACKAGED_MAP.read_bytes() == ROOT_MAP.read_bytes(), (
        "src/permgate/data/endpoint_map.yaml differs from endpoint_map.yaml: after "
        "regenerating the map, run cp endpoint_map.yaml src/permgate/data/endpoint_map.yaml"
    )


def test_version_option_prints_the_project_version(tmp_path: Path) -> None:
    """`permgate --version` prints the version pyproject.toml declares, read from the
    installed package's metadata."""
    result = subprocess.run(
        [sys.executable, "-m", "permgate", "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == f"permgate {PROJECT_VERSION}\n"
    assert version("permgate") == PROJECT_VERSION


# -- the wheel ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The permgate wheel, built with pip from a clean copy of the sources."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    dist = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    [built] = dist.glob("permgate-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (without its dependencies, which this venv has) into a folder
    of its own; put first on PYTHONPATH it shadows the editable source tree."""
    target = tmp_path_factory.mktemp("site")
    pip_install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q"]
    result = subprocess.run(
        [*pip_install, "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return target


@pytest.mark.slow
@pytest.mark.parametrize("member", PACKAGE_DATA, ids=[m.split("/", 1)[1] for m in PACKAGE_DATA])
def test_wheel_carries_package_data(wheel: Path, member: str) -> None:
    """Every data file permgate reads at run time is in the wheel, identical to its source."""
    with zipfile.ZipFile(wheel) as archive:
        assert member in archive.namelist(), f"{wheel.name} lacks {member}"
        assert archive.read(member) == (ROOT / "src" / member).read_bytes()


@pytest.mark.slow
def test_installed_wheel_reports_its_version(wheel: Path, installed: Path, tmp_path: Path) -> None:
    """`permgate --version` of the installed wheel is the wheel's version."""
    result = subprocess.run(
        [sys.executable, "-m", "permgate", "--version"],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(installed)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert wheel.name.startswith(f"permgate-{PROJECT_VERSION}-")
    assert result.stdout == f"permgate {PROJECT_VERSION}\n"


@pytest.mark.slow
async def test_installed_wheel_demo_works_from_an_empty_directory(
    installed: Path, tmp_path: Path
) -> None:
    """The installed wheel's `permgate demo`, started in an empty directory, serves the map
    from inside the installed package and its printed lines give every outcome."""
    command = [sys.executable, "-m", "permgate", "demo", "--port", "0", "--admin-port", "0"]
    env = _clean_env(PYTHONPATH=str(installed))
    async with running_demo(command, cwd=tmp_path, env=env) as demo:
        assert Path(demo.map_path) == installed / "permgate" / "data" / "endpoint_map.yaml"
        assert await try_printed_lines(demo.text) == EXPECTED_OUTCOMES
    assert list(tmp_path.iterdir()) == [], "the demo left files in the current directory"
