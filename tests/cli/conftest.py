"""Every test here runs on a fresh SQLite file and a fresh PostgreSQL database."""

from __future__ import annotations

from store_fixtures import acme, service, store, store_dsn

__all__ = ["acme", "service", "store", "store_dsn"]
