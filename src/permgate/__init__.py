"""permgate: a sidecar enforcement gateway for insurance APIs.

The package root stays light on purpose: importing ``permgate`` must not pull in
aiohttp or a database driver, so the pure core can be used from anywhere.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    # The one place the version is written is pyproject.toml; an installed permgate
    # (wheel or editable) reads it back from its own metadata.
    __version__: str = version("permgate")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
