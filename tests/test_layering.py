"""The folders are the layers: each package imports only the packages below it
(DEVELOPERS.md draws the picture), and the pure core loads no web, store or CLI code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A package may import itself and anything listed before it.
LAYERS: list[str] = [
    "core",
    "config",
    "store",
    "observability",
    "maps",
    "manage",
    "gateway",
    "review",
    "admin",
    "console",
    "demo",
    "runtime",
    "cli",
]


def package_of(module: str) -> str:
    """`permgate.gateway.pipeline` -> `gateway`; `permgate.config` -> `config`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "permgate"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every permgate module a source file imports, with its line, including imports
    made only for type checking (a type import is still a dependency)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "permgate":
                found += [(node.lineno, f"permgate.{alias.name}") for alias in node.names]
            elif node.module.startswith("permgate."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("permgate.")]
    return found


def source_files() -> list[Path]:
    return sorted((SRC / "permgate").rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    """A new folder must be placed in the picture before it can hold code."""
    packages = {p.name for p in (SRC / "permgate").iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in (SRC / "permgate").glob("*.py")} - {"__init__", "__main__"}
    assert packages | modules == set(LAYERS)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    """No module imports a package above its own layer."""
    module = ".".join(path.relative_to(SRC).with_suffix("").parts)
    own = package_of(module)
    if own in {"__init__", "__main__", "permgate"}:
        return  # the package's entry points may reach the CLI
    allowed = set(LAYERS[: LAYERS.index(own) + 1])
    upward = [
        f"line {line}: {target}"
        for line, target in imported_modules(path)
        if package_of(target) not in allowed and package_of(target) != "__version__"
    ]
    assert upward == [], f"{module} ({own}) imports from a layer above it"


CORE_FORBIDDEN = [
    "aiohttp",
    "asyncpg",
    "aiosqlite",
    "prometheus_client",
    "permgate.store",
    "permgate.gateway",
    "permgate.cli",
]


@pytest.mark.parametrize(
    "module",
    sorted(f"permgate.core.{p.stem}" for p in (SRC / "permgate" / "core").glob("[!_]*.py")),
)
def test_core_module_pulls_in_no_outer_layer(module: str) -> None:
    """Importing a core module in a fresh interpreter loads no web, store or CLI code."""
    probe = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {CORE_FORBIDDEN!r} if any(k == m or k.startswith(m + '.') "
        "for k in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
