"""Options every command takes and how they become :class:`Settings`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from permgate.config import Settings, load_settings

DEFAULT_CONFIG: Final = "permgate.yaml"


def add_common_arguments(
    parser: argparse.ArgumentParser, *, json_output: bool = True, unused: str | None = None
) -> None:
    """``--config``, ``--store`` and (unless the command has no JSON form) ``--json``.

    Every command accepts ``--config`` and ``--store``; a command that reads
    neither passes ``unused`` (why), so that its ``--help`` does not promise otherwise.
    """
    config_help = f"permgate.yaml to read (default: ./{DEFAULT_CONFIG} if present)"
    store_help = "store DSN; overrides the config's store"
    if unused is not None:
        config_help = store_help = f"accepted, but not used: {unused}"
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument("--store", metavar="DSN", help=store_help)
    if json_output:
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Config file (explicit, or ./permgate.yaml when present), env, then ``--store``."""
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    overrides = {"store": args.store} if getattr(args, "store", None) else {}
    return load_settings(path, overrides=overrides)
