"""Admin API fixtures; they live in :mod:`admin_world` so tests can import its types
without importing a ``conftest`` module (another directory has one too)."""

from __future__ import annotations

from admin_world import backend, gateway_map, store, world

__all__ = ["backend", "gateway_map", "store", "world"]
