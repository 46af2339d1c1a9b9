"""permgate: a sidecar enforcement gateway for insurance APIs.

The package root stays light on purpose: importing ``permgate`` must not pull in
aiohttp or a database driver, so the pure core can be used from anywhere.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
