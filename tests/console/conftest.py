"""Console fixtures; they live in :mod:`console_world` so tests can import its types
without importing a ``conftest`` module (other directories have one too)."""

from __future__ import annotations

from console_world import runtime, world

__all__ = ["runtime", "world"]
