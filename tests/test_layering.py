"""The pure core imports nothing from the web, store or CLI layers (DEVELOPERS.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "permgate.model",
    "permgate.errors",
    "permgate.reasons",
    "permgate.permissions",
    "permgate.roles",
    "permgate.endpoints",
    "permgate.decision",
]
FORBIDDEN = [
    "aiohttp",
    "asyncpg",
    "aiosqlite",
    "permgate.store",
    "permgate.cli",
    "prometheus_client",
]


@pytest.mark.parametrize("module", CORE)
def test_core_module_pulls_in_no_outer_layer(module: str) -> None:
    """Importing a core module in a fresh interpreter loads no web, store or CLI code."""
    probe = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {FORBIDDEN!r} if any(k == m or k.startswith(m + '.') "
        "for k in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


REVIEW = [
    "permgate.review.world",
    "permgate.review.diff",
    "permgate.review.render",
    "permgate.review.lint",
    "permgate.review.advise",
]
REVIEW_FORBIDDEN = [
    "aiohttp",
    "permgate.cli",
    "permgate.pipeline",
    "permgate.app",
    "permgate.admin",
]


@pytest.mark.parametrize("module", REVIEW)
def test_review_module_stays_below_the_gateway_and_the_cli(module: str) -> None:
    """Access review sits above the core and below the CLI: importing it loads no web,
    gateway or CLI code (the store is imported only to read a live model)."""
    probe = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {REVIEW_FORBIDDEN!r} if any(k == m or k.startswith(m + '.') "
        "for k in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
